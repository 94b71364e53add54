"""DeviceCatalog: publishes devices.devices to the compacted `devices` topic, so other services keep a copy.

Every way a device is registered or changed (the CLI, the API, MQTT auto-registration, partners) writes
devices.devices, whose trigger NOTIFYs `CONFIG_CHANNEL`; this actor LISTENs, and also re-reads on the
supervisor's reconcile timer (a lost listening connection). Each time it publishes only the difference
between the table and what the topic already holds: a record for a new or changed device, a tombstone
for a deleted one. What the topic holds is read back from it at start (it is compacted: its latest
record per device is the catalogue), so a restarted actor publishes nothing twice and misses no delete.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

import asyncpg
import ray

from actors.logs import setup_logging
from meterray.device_info import DeviceInfo
from meterray.settings import Settings
from storage import sink_errors
from storage.kafka import device_topic, topics
from storage.kafka.producer import AsyncProducer
from storage.postgres.device_catalog import load_catalog
from storage.postgres.devices import CONFIG_CHANNEL

log = logging.getLogger(__name__)
DEBOUNCE_S = 0.2  # one registration is several statements (and NOTIFYs): read once after them


class DeviceCatalogCore:
    def __init__(self, settings: Settings, producer: AsyncProducer) -> None:
        self._settings = settings
        self._producer = producer
        self._topic = settings.topic(topics.DEVICES)
        self._published: dict[str, DeviceInfo] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.tombstones = 0
        self.syncs = 0
        self.last_error: str | None = None

    async def sync(self) -> tuple[int, int]:
        """Publish the difference between devices.devices and the topic; returns (records, tombstones)."""
        if self._published is None:
            table = await asyncio.to_thread(device_topic.read_table, self._settings.kafka_bootstrap, self._topic)
            self._published = {k: device_topic.decode(v) for k, v in table.items()}
        conn = await asyncpg.connect(self._settings.pg_dsn)
        try:
            wanted = await load_catalog(conn)
        finally:
            await conn.close()
        changed = [d for k, d in sorted(wanted.items()) if self._published.get(k) != d]
        deleted = sorted(self._published.keys() - wanted.keys())
        if changed or deleted:
            await self._producer.send_many(device_topic.messages(self._topic, self._settings.kafka_partitions,
                                                                 changed, deleted))
            for d in changed:
                self._published[d.device_id] = d
            for k in deleted:
                del self._published[k]
            self.published += len(changed)
            self.tombstones += len(deleted)
            log.info("devices topic: %d records, %d tombstones", len(changed), len(deleted))
        self.syncs += 1
        return len(changed), len(deleted)

    async def start(self) -> None:
        """Starts the loop, whose first round publishes: Kafka or PostgreSQL away at start delays the
        catalogue, it does not fail the supervisor's start."""
        if self._task is None:
            self._wake.set()
            self._task = asyncio.create_task(self._run(), name="device-catalog")

    async def _run(self) -> None:
        listener = asyncio.create_task(self._listen())
        try:
            while True:
                try:
                    await asyncio.wait_for(self._wake.wait(), self._settings.reconcile_interval_s)
                    await asyncio.sleep(DEBOUNCE_S)
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
                try:
                    await self.sync()
                    self.last_error = None
                except Exception as err:  # PostgreSQL or Kafka away: the next signal or tick tries again
                    self.last_error = sink_errors.describe(err)
                    log.warning("device catalog not published: %s", self.last_error)
        finally:
            listener.cancel()

    async def _listen(self) -> None:
        while True:
            lost = asyncio.Event()
            conn = None
            try:
                conn = await asyncpg.connect(self._settings.pg_dsn)
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CONFIG_CHANNEL, lambda *_: self._wake.set())
                self._wake.set()  # whatever changed while nobody listened
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("device catalog listener lost (%s); reconnecting", err)
            finally:
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def status(self) -> dict[str, object]:
        if self._task is not None and self._task.done() and not self._task.cancelled():
            err = self._task.exception()
            if err is not None:
                raise RuntimeError(f"device catalog loop died: {err!r}")
        return {"role": "device-catalog", "pid": os.getpid(), "devices": len(self._published or {}),
                "published": self.published, "tombstones": self.tombstones, "syncs": self.syncs,
                "last_error": self.last_error, "at": time.time()}


@ray.remote(num_cpus=0, max_restarts=0)
class DeviceCatalog:
    """Ray actor around DeviceCatalogCore; the supervisor recreates it when it dies."""

    def __init__(self, settings: Settings, member: str) -> None:
        setup_logging(settings.log_level, member)
        self._settings = settings
        self._producer = AsyncProducer(settings.kafka_bootstrap)
        self._core = DeviceCatalogCore(settings, self._producer)

    async def start(self) -> None:
        await self._producer.start()
        await self._core.start()

    async def ping(self) -> dict[str, object]:
        return {**self._core.status(), "node_id": ray.get_runtime_context().get_node_id()}

    async def sync(self) -> tuple[int, int]:
        return await self._core.sync()

    async def stop(self) -> None:
        await self._core.stop()
        await self._producer.close()
