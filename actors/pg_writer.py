"""PgWriter: consumer group of `readings` that keeps the PostgreSQL archive and current values.

Each batch is written in one transaction (idempotent on the reading key) and only then committed.
Records the codec refuses, failure records and records of unregistered devices are dead-lettered
before the write; a write PostgreSQL refuses as data is split by the stage until the offending
records are found (see actors.consumer_stage).
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import ray
from confluent_kafka import Message

from actors import metrics
from actors.consumer_stage import ConsumerStage, StageHost
from actors.known_devices import KnownDevices
from actors.sink_input import storable
from meterray.settings import Settings
from storage.kafka import topics
from storage.kafka.producer import AsyncProducer
from storage.postgres.readings import ReadingRow, ReadingsWriter

GROUP_ID = "meterray-pg-writer"


class PgWriterCore(ConsumerStage):
    role = "pg-writer"
    max_batch = 5000

    def __init__(self, settings: Settings, pool: asyncpg.Pool, producer: AsyncProducer, member: str,
                 consumer_config: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings, GROUP_ID, topics.READINGS, member, producer, consumer_config)
        self._pool = pool
        self._writer = ReadingsWriter()
        self._known = KnownDevices(pool)

    async def handle(self, messages: Sequence[Message]) -> None:
        batches, refused = await storable(messages, self._known)
        await self.send_dead_letters(refused)
        rows: list[ReadingRow] = []
        for batch in batches:
            device_id, ts, source = batch.device_id, batch.ts_ms, batch.source
            rows.extend([(device_id, v.quantity, ts, v.value, v.unit, v.quality, source) for v in batch.values])
        started = time.perf_counter()
        async with self._pool.acquire() as conn:
            await self._writer.write(conn, rows)
        metrics.sink_write_latency_ms().observe((time.perf_counter() - started) * 1000, tags={"sink": "postgres"})
        metrics.count(metrics.readings(), len(rows), stage=self.role)


@ray.remote(num_cpus=0, max_restarts=0)
class PgWriter(StageHost):
    """Ray actor around PgWriterCore; the supervisor recreates it when it dies."""

    core_class = PgWriterCore
