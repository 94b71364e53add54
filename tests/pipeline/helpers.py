"""Small HTTP and SQL helpers for the pipeline tests."""
from __future__ import annotations

import asyncio
import functools
import json
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from meterray.settings import Settings
from tests.auth_headers import bearer


@functools.cache
def _run_settings() -> Settings:
    return Settings.from_env()


def platform_admin() -> dict[str, str]:
    """Bearer headers of a platform admin (every device, the runtime, partners: meterray.access), minted
    fresh on every call (access tokens live minutes, a test run longer). Signed with the key of the run's
    settings: conftest's `settings` is Settings.from_env() with ports and names changed, never the key."""
    return bearer(_run_settings())


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout_s: float = 10.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
    except (urllib.error.URLError, ConnectionError):
        return 0, None


def sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def db(settings: Settings, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """`fn(connection, *args)` on a connection of its own to the run's database (a storage function)."""
    async def run() -> Any:
        conn = await asyncpg.connect(settings.pg_dsn)
        try:
            return await fn(conn, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def read_topic(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[tuple[bytes | None, bytes]]:
    """Every message of `topic` from the beginning (key, value), read by a throw-away consumer group.

    Returns as soon as every partition has been read to its end (however long the group join
    takes on a busy machine); fails if that does not happen within `timeout_s`.
    """
    import time
    import uuid

    import pytest
    from confluent_kafka import Consumer, KafkaError

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-reader-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False, "enable.partition.eof": True})
    c.subscribe([topic])
    out: list[tuple[bytes | None, bytes]] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            err = m.error()
            if err is None:
                at_end.discard(m.partition())
                out.append((m.key(), m.value()))
            elif err.code() == KafkaError._PARTITION_EOF:
                at_end.add(m.partition())
                assigned = {tp.partition for tp in c.assignment()}
                if assigned and assigned <= at_end:
                    return out
            else:
                raise RuntimeError(f"reading {topic}: {err}")
    finally:
        c.close()
    pytest.fail(f"could not read {topic} to its end within {timeout_s:.0f}s ({len(out)} messages so far)")


def all_devices(api: str, page_size: int = 100, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every device of `GET /api/v1/devices` the caller sees (default: a platform admin: all of them),
    following `next_cursor` page by page."""
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = f"limit={page_size}" + (f"&cursor={cursor}" if cursor else "")
        status, body = http("GET", f"{api}/api/v1/devices?{query}", headers=headers or platform_admin())
        assert status == 200, body
        out += body["devices"]
        cursor = body["next_cursor"]
        if cursor is None:
            return out
