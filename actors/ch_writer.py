"""ChWriter: consumer group of `readings` that keeps the ClickHouse analytics copy (storage/clickhouse).

Each batch is one INSERT into `readings` (its rollup views fill the interval aggregates on the same
insert) and only then are the offsets committed (actors.consumer_stage): a crash in between delivers the
batch again, which the ReplacingMergeTree and the idempotent rollups absorb (schema.py). Records the codec
refuses, failure records and records of unregistered devices are dead-lettered, as by the PostgreSQL
writer (so both sinks hold the same readings); a ClickHouse that does not answer (server down, data
directory unusable, a table missing) keeps the batch and the offsets until it does.

Device metadata comes from the compacted `devices` topic, read whole from its beginning before the first
batch of readings and then followed beside `readings` (`tick`), copied into ClickHouse's `devices` table:
the organisation a device belongs to (organisation aggregates) and its time zone (a reading's local day,
stamped here). A device registered while the writer runs may have its first readings stamped with the
default zone's day if they overtake its `devices` record (two topics, no order between them).

chDB is ClickHouse inside this process, and one process owns a data directory: so with chdb:// this actor
is the only ClickHouse client, and it also answers the aggregate queries of the HTTP API (`aggregates`),
on a client of its own in a worker thread. With an http:// server the same calls go to the server.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timezone
from typing import Any
from uuid import UUID

import asyncpg
import ray
from confluent_kafka import Message

from actors import metrics
from actors.consumer_stage import ConsumerStage, StageHost
from actors.known_devices import KnownDevices
from actors.priority import idle_threads, lower_priority
from actors.sink_input import storable
from meterray.device_info import DeviceInfo
from meterray.intervals import TimezoneError, zone
from meterray.settings import Settings
from storage import sink_errors
from storage.clickhouse import queries
from storage.clickhouse.store import ChRow, ClickHouseStore
from storage.kafka import device_topic, topics
from storage.kafka.producer import AsyncProducer

log = logging.getLogger(__name__)

GROUP_ID = "meterray-ch-writer"
# A local day starts at local midnight, and since 2000 every zone's UTC offset and DST change in the tz
# database falls on a quarter hour (the odd ones: +05:45 Nepal, +08:45 Eucla, +12:45 Chatham): so all of
# a 15-minute UTC bucket has one local day, and a day is computed once per zone and bucket, not per record
# (the codec refuses timestamps before 2000). Kept across batches, cleared past DAY_CACHE_MAX keys.
DAY_BUCKET_MS = 15 * 60 * 1000
DAY_CACHE_MAX = 100_000
NAME = "ch-writer-0"  # the one that answers queries (with chdb:// there is only one)


class ChWriterCore(ConsumerStage):
    role = "ch-writer"
    max_batch = 5000

    def __init__(self, settings: Settings, store: ClickHouseStore, pool: asyncpg.Pool, producer: AsyncProducer,
                 member: str, consumer_config: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings, GROUP_ID, topics.READINGS, member, producer, consumer_config)
        self.batch_wait_s = settings.ch_batch_wait_s
        self._store = store
        self._known = KnownDevices(pool)
        self._default_tz = settings.default_timezone
        self._timezones: dict[str, str] | None = None  # device id → its own zone, loaded on first use
        self._devices = device_topic.TableFollower(settings.kafka_bootstrap, settings.topic(topics.DEVICES))
        self._devices_pending: list[device_topic.Record] = []  # read, not yet in ClickHouse
        self._devices_caught_up = False
        self.device_records = 0
        self.rows = 0
        self._days: dict[tuple[str, int], date] = {}  # (zone, 15-minute bucket of ts) → local day
        self._idle_merges = settings.ch_writer_sched_idle

    async def handle(self, messages: Sequence[Message]) -> None:
        timezones = await self._zones()
        rows: list[ChRow] = []
        days = self._days
        if len(days) > DAY_CACHE_MAX:
            days.clear()
        batches, refused = await storable(messages, self._known)  # the same records as the PostgreSQL writer
        for batch in batches:
            tz = timezones.get(batch.device_id, self._default_tz)
            ts, device_id, source = batch.ts_ms, batch.device_id, batch.source
            key = (tz, ts // DAY_BUCKET_MS)
            day = days.get(key)
            if day is None:
                day = days[key] = _local_day(ts, tz, self._default_tz)
            rows += [(device_id, v.quantity, ts, v.value, v.unit, v.quality, source, day) for v in batch.values]
        await self.send_dead_letters(refused)
        started = time.perf_counter()
        await asyncio.to_thread(self._store.insert_readings, rows)
        metrics.sink_write_latency_ms().observe((time.perf_counter() - started) * 1000, tags={"sink": "clickhouse"})
        metrics.count(metrics.readings(), len(rows), stage=self.role)
        self.rows += len(rows)
        if self._idle_merges:  # chDB starts merge threads as its parts call for them
            idle_threads()

    async def _zones(self) -> dict[str, str]:
        """Device id → its own time zone. The first call copies the whole `devices` topic first, so every
        device published before the writer started has its zone before any of its readings is stamped."""
        if not self._devices_caught_up:
            self._devices_pending += await asyncio.to_thread(self._devices.catch_up)
            await self._copy_devices()
            self._devices_caught_up = True
        if self._timezones is None:
            self._timezones = await asyncio.to_thread(self._store.device_timezones)
        return self._timezones

    async def tick(self) -> None:
        """Copy what arrived on `devices` since into ClickHouse (kept and retried while it fails)."""
        if not self._devices_caught_up:
            await self._zones()
            return
        self._devices_pending += await asyncio.to_thread(self._devices.poll)
        await self._copy_devices()

    async def _copy_devices(self) -> None:
        if not self._devices_pending:
            return
        records: list[tuple[str, DeviceInfo | None, int]] = []
        for device_id, value, offset in self._devices_pending:
            try:
                records.append((device_id, None if value is None else device_topic.decode(value), offset))
            except ValueError as err:  # the topic is a table: a later record of the device replaces this one
                log.error("devices record of %r at offset %d: %s; skipped", device_id, offset, err)
        await asyncio.to_thread(self._store.upsert_devices, records)
        self._devices_pending = []
        self.device_records += len(records)
        if self._timezones is not None:
            for device_id, info, _ in records:
                if info is not None and info.timezone:
                    self._timezones[device_id] = info.timezone
                else:
                    self._timezones.pop(device_id, None)

    async def stop(self) -> None:
        await super().stop()
        await asyncio.to_thread(self._devices.close)

    async def ping(self) -> dict[str, object]:
        return {**await super().ping(), "rows": self.rows, "device_records": self.device_records}


def _local_day(ts_ms: int, tz_name: str, default: str) -> date:
    try:
        tz = zone(tz_name)
    except TimezoneError:  # a zone this machine's tz database lacks: the platform's default, not a lost reading
        tz = zone(default)
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).astimezone(tz).date()


@ray.remote(num_cpus=0, max_restarts=0)
class ChWriter(StageHost):
    """Ray actor around ChWriterCore; the supervisor recreates it when it dies. Owns the process's
    ClickHouse clients (with chdb://, the engine itself) and answers aggregate queries on them."""

    pool_size = 1  # only for KnownDevices

    def __init__(self, settings: Settings, member: str) -> None:
        lower_priority(settings.ch_writer_niceness)  # before chDB starts its threads: they inherit it
        super().__init__(settings, member)
        self._store = ClickHouseStore(settings.clickhouse, settings.clickhouse_database)

    def _make_core(self, pool: asyncpg.Pool, producer: AsyncProducer) -> ConsumerStage:
        return ChWriterCore(self._settings, self._store, pool, producer, self._member)

    async def aggregates(self, quantity: str, interval: str, start: datetime | date, end: datetime | date,
                         device_id: str | None = None,
                         organisation_id: UUID | None = None) -> list[queries.Aggregate]:
        """storage.clickhouse.queries.aggregates on this process's read client. ClickHouse errors come back
        as `ClickHouseUnavailable` (the caller answers 503)."""
        def run() -> list[queries.Aggregate]:
            return queries.aggregates(self._store.client("read"), self._store.database, quantity, interval,
                                      start, end, device_id=device_id, organisation_id=organisation_id)
        try:
            return await asyncio.to_thread(run)
        except Exception as err:
            raise ClickHouseUnavailable(sink_errors.describe(err)) from None

    async def raw_counts(self, device_ids: list[str]) -> queries.RawCounts:
        return await asyncio.to_thread(lambda: queries.raw_counts(self._store.client("read"), self._store.database,
                                                                  device_ids))

    async def stop(self) -> None:
        await super().stop()
        await asyncio.to_thread(self._store.close)


class ClickHouseUnavailable(RuntimeError):
    """An aggregate query ClickHouse did not answer (down, or its data directory unusable)."""
