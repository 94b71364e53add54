"""Fixtures of the stage tests: a database and topics of their own, a TCP proxy that can cut
PostgreSQL off for real, and helpers to register devices and drive a stage in-process."""
from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from meterray.app.runtime import migrate_database
from meterray.domain import DeviceSpec, ModbusConnection
from meterray.settings import Settings
from storage.kafka import topics
from storage.postgres.databases import drop_database, recreate_database
from storage.postgres.devices import save_modbus_connections


@pytest.fixture(scope="module")
def actors_db(stores: Settings) -> Iterator[Settings]:
    """A database of this module's own: its tests install triggers and locks the runtime must not meet."""
    name = f"{urlsplit(stores.pg_dsn).path.lstrip('/')}_actors"
    dsn = asyncio.run(recreate_database(stores.pg_dsn, name))
    migrate_database(dsn)  # with the meter profiles the code knows, as `meterray migrate` does
    yield stores.model_copy(update={"pg_dsn": dsn})
    asyncio.run(drop_database(stores.pg_dsn, name))


@pytest.fixture
def own(actors_db: Settings) -> Settings:
    """The module's database and a fresh set of topics for one test."""
    s = actors_db.model_copy(update={"kafka_topic_prefix": f"{actors_db.kafka_topic_prefix}st-{time.monotonic_ns()}."})
    topics.ensure_topics(s)
    return s


async def until(check: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.2,
                explain: Callable[[], object] | None = None) -> None:
    """Poll `check` (sync, or returning an awaitable) until it holds; fail after `timeout_s` naming `what`
    and, with `explain`, what it returns then (a stage's counters)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ok = check()
        if inspect.isawaitable(ok):
            ok = await ok
        if ok:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}" + (f": {explain()}" if explain else "")
        await asyncio.sleep(every_s)


async def register(dsn: str, *device_ids: str) -> None:
    """Register the devices as meterray does: behind a Modbus connection (never polled here)."""
    conn = await asyncpg.connect(dsn)
    try:
        devices = tuple(DeviceSpec(d, "sdm630", unit) for unit, d in enumerate(device_ids, start=1))
        # TEST-NET-1 (RFC 5737): an address that is never a real meter.
        await save_modbus_connections(conn, [ModbusConnection(f"test-{device_ids[0]}", "192.0.2.1", 502, 5.0, 1.0,
                                                              devices)])
    finally:
        await conn.close()


class TcpProxy:
    """127.0.0.1:<port> → target. `cut()` refuses new connections and resets open ones, as a dead
    server or a broken network does; `mend()` serves again on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    def dsn(self, dsn: str) -> str:
        parts = urlsplit(dsn)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()
            self._open.discard(writer)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._open):
                w.transport.abort()
            self._open.clear()
            await self._server.wait_closed()
            self._server = None

    async def mend(self) -> None:
        await self.start()


@pytest.fixture
async def pg_proxy(actors_db: Settings) -> AsyncIterator[TcpProxy]:
    parts = urlsplit(actors_db.pg_dsn)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    yield proxy
    await proxy.cut()
