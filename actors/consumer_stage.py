"""The loop shared by every Kafka-consuming stage: take a batch, hand it to the sink, then commit.

A failed sink keeps the batch and retries it with capped backoff; offsets move only after the sink
confirmed, so a crash repeats work and never skips it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable, Sequence

import asyncpg
from confluent_kafka import Message

from meterray.settings import Settings
from storage.kafka import codec, topics
from storage.kafka.consumer import AsyncConsumer
from storage.kafka.producer import AsyncProducer, OutMessage

log = logging.getLogger(__name__)


class ConsumerStage:
    """Subclasses implement `handle(messages)`; it must be idempotent (it may see a batch twice)."""

    role = "stage"
    max_batch = 2000

    def __init__(self, settings: Settings, group_id: str, topic: str, member: str) -> None:
        # Static membership: a replacement started under the same member name takes over the dead
        # one's partitions at once, instead of after the broker's session timeout.
        self._consumer = AsyncConsumer(settings.kafka_bootstrap, settings.topic(group_id), [settings.topic(topic)],
                                       **{"group.instance.id": settings.topic(member)})
        self._dlq = settings.topic(topics.READINGS_DLQ)
        self._partitions = settings.kafka_partitions
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.batches = 0
        self.messages = 0
        self.sink_failures = 0
        self.last_error: str | None = None

    async def handle(self, messages: Sequence[Message]) -> None:
        raise NotImplementedError

    def dead_letter(self, message: Message, reason: str) -> OutMessage:
        """A dead-letter record for a message this stage cannot use: why, where from, the raw bytes."""
        key = message.key()
        return (self._dlq, topics.partition_for(key.decode(errors="replace") if key else "", self._partitions), key,
                codec.encode_dead_letter(reason, message.value(), stage=self.role, topic=message.topic(),
                                         partition=message.partition(), offset=message.offset()))

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.role}-loop")

    async def _run(self) -> None:
        while not self._stopping:
            messages = await self._consumer.get_batch(self.max_batch)
            if not messages:
                continue
            delay = 0.2
            while True:
                try:
                    await self.handle(messages)
                    await self._consumer.commit(messages)
                    break
                except Exception as err:  # the sink is down or refused: keep the batch, retry
                    self.sink_failures += 1
                    self.last_error = f"{type(err).__name__}: {err}"
                    log.warning("%s: batch of %d not stored (%s); retrying in %.1fs",
                                self.role, len(messages), self.last_error, delay)
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                    delay = min(delay * 2, 10.0)
            self.batches += 1
            self.messages += len(messages)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=10)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        await self._consumer.close()

    async def ping(self) -> dict[str, object]:
        if self._task is not None and self._task.done() and not self._task.cancelled():
            err = self._task.exception()
            if err is not None:
                raise RuntimeError(f"{self.role} loop died: {err!r}")
        return {"role": self.role, "pid": os.getpid(), "batches": self.batches, "messages": self.messages,
                "sink_failures": self.sink_failures, "last_error": self.last_error}


class StageHost:
    """The body of a stage's Ray actor: owns the process's PostgreSQL pool and Kafka producer."""

    core_class: Callable[[Settings, asyncpg.Pool, AsyncProducer, str], ConsumerStage]

    def __init__(self, settings: Settings, member: str) -> None:
        self._settings = settings
        self._member = member
        self._core: ConsumerStage | None = None
        self._producer: AsyncProducer | None = None
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        if self._core is None:
            self._pool = await asyncpg.create_pool(self._settings.pg_dsn, min_size=1, max_size=2)
            self._producer = AsyncProducer(self._settings.kafka_bootstrap)
            await self._producer.start()
            self._core = self.core_class(self._settings, self._pool, self._producer, self._member)
            await self._core.start()

    async def ping(self) -> dict[str, object]:
        if self._core is None:
            raise RuntimeError("start() was not called")
        return await self._core.ping()

    async def stop(self) -> None:
        if self._core is not None:
            await self._core.stop()
        if self._producer is not None:
            await self._producer.close()
        if self._pool is not None:
            await self._pool.close()
