"""PgWriter: consumer group of `readings` that keeps the PostgreSQL archive and current values.

Each batch is written in one transaction (idempotent on the reading key) and only then committed.
"""
from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import ray
from confluent_kafka import Message

from actors import metrics
from actors.consumer_stage import ConsumerStage, StageHost
from meterray.domain import ReadingBatch
from meterray.settings import Settings
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer, OutMessage
from storage.postgres.readings import ReadingRow, ReadingsWriter, ts_from_ms

GROUP_ID = "meterray-pg-writer"


class PgWriterCore(ConsumerStage):
    role = "pg-writer"
    max_batch = 5000

    def __init__(self, settings: Settings, pool: asyncpg.Pool, producer: AsyncProducer, member: str) -> None:
        super().__init__(settings, GROUP_ID, topics.READINGS, member)
        self._pool = pool
        self._producer = producer
        self._writer = ReadingsWriter()

    async def handle(self, messages: Sequence[Message]) -> None:
        rows: list[ReadingRow] = []
        dead: list[OutMessage] = []
        for m in messages:
            try:
                batch = codec.decode(m.value())
                if not isinstance(batch, ReadingBatch):
                    raise codec.CodecError("a failure record reached the readings topic")
            except codec.CodecError as err:
                dead.append(self.dead_letter(m, str(err)))
                continue
            ts = ts_from_ms(batch.ts_ms)
            rows.extend((batch.device_id, v.quantity, ts, v.value, v.unit, v.quality, batch.source)
                        for v in batch.values)
        if dead:
            await self._producer.send_many(dead)
            metrics.count(metrics.dead_letters(), len(dead), stage=self.role)
        async with self._pool.acquire() as conn:
            await self._writer.write(conn, rows)
        metrics.count(metrics.readings(), len(rows), stage=self.role)


@ray.remote(num_cpus=0, max_restarts=0)
class PgWriter(StageHost):
    """Ray actor around PgWriterCore; the supervisor recreates it when it dies."""

    core_class = PgWriterCore
