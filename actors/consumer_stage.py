"""The loop shared by every Kafka-consuming stage: take a batch, hand it to the sink, then commit.

Offsets move only after the sink confirmed, so a crash repeats work and never skips it. What the
sink refuses decides what happens next (storage.sink_errors):
- a data error: the batch is split in halves until the records that fail alone are found; those
  go to `readings.dlq` with the sink's reason, the rest is stored and the stream goes on;
- anything else (PostgreSQL or Kafka away): the batch is kept and retried with capped, jittered
  backoff. Meanwhile the consumer pauses its partitions and keeps calling consume, so it stays in
  its group however long the outage lasts (librdkafka evicts a member that has not called consume
  for `max.poll.interval.ms`); a sink call that hangs is covered the same way. Partitions revoked
  meanwhile are dropped from the batch and never committed: their new owner starts at the
  committed offset.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import asyncpg
import ray
from confluent_kafka import KafkaException, Message

from actors import metrics
from actors.heap import freeze_startup_heap
from actors.logs import setup_logging
from meterray.backoff import Backoff
from meterray.settings import Settings
from storage import sink_errors
from storage.kafka import codec, topics
from storage.kafka.consumer import AsyncConsumer, ConsumerFatalError, Owned
from storage.kafka.producer import AsyncProducer, OutMessage

log = logging.getLogger(__name__)

# A sink call still running after this long (or a quarter of max.poll.interval.ms, if less) makes
# the stage pause and keep calling consume: it stays in its group, and a rebalance started by
# another member does not wait for our sink. Shorter would pause and refetch after every slow batch.
KEEPALIVE_AFTER_S = 5.0
RETRY_BASE_S, RETRY_CAP_S = 0.2, 5.0


class StageStopping(Exception):
    """stop() was called while a batch was still waiting for its sink."""


class ConsumerStage:
    """Subclasses implement `handle(messages)`; it must be idempotent (it may see a batch twice)."""

    role = "stage"
    max_batch = 2000
    batch_wait_s = 0.5  # a poll waits this long for max_batch messages, then takes what came

    def __init__(self, settings: Settings, group_id: str, topic: str, member: str, producer: AsyncProducer,
                 consumer_config: Mapping[str, Any] | None = None) -> None:
        # Static membership: a replacement started under the same member name takes over the dead
        # one's partitions at once, instead of after the broker's session timeout.
        config = {"group.instance.id": settings.topic(member), **(consumer_config or {})}
        self._consumer = AsyncConsumer(settings.kafka_bootstrap, settings.topic(group_id), [settings.topic(topic)],
                                       **config)
        self._producer = producer
        self._dlq = settings.topic(topics.READINGS_DLQ)
        self._partitions = settings.kafka_partitions
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._batch_owned: Owned = {}
        self._dead_lettered: set[tuple[str | None, int | None, int | None]] = set()  # of the batch in flight
        self._outage_since: float | None = None
        self.batches = 0
        self.messages = 0
        self.dead_letters = 0
        self.sink_failures = 0
        self.splits = 0
        self.last_error: str | None = None

    async def handle(self, messages: Sequence[Message]) -> None:
        raise NotImplementedError

    async def tick(self) -> None:
        """Called after every poll of the loop, with or without messages (timers: e.g. the device
        processor's inactivity sweep). Never concurrently with `handle`. Errors are logged, not fatal."""

    def dead_letter(self, message: Message, reason: str) -> OutMessage:
        """A dead-letter record for a message this stage cannot use: why, where from, the raw bytes."""
        key = message.key()
        return (self._dlq, topics.partition_for(key.decode(errors="replace") if key else "", self._partitions), key,
                codec.encode_dead_letter(reason, message.value(), stage=self.role, topic=message.topic(),
                                         partition=message.partition(), offset=message.offset()))

    async def send_dead_letters(self, refused: Sequence[tuple[Message, str]]) -> None:
        """Dead-letter each (message, reason) once per batch, however often the batch is retried or split."""
        fresh = [(m, r) for m, r in refused if (m.topic(), m.partition(), m.offset()) not in self._dead_lettered]
        if not fresh:
            return
        await self._producer.send_many(self.dead_letter(m, r) for m, r in fresh)
        self._dead_lettered.update((m.topic(), m.partition(), m.offset()) for m, _ in fresh)
        self.dead_letters += len(fresh)
        metrics.count(metrics.dead_letters(), len(fresh), stage=self.role)
        for m, reason in fresh[:3]:
            key = m.key()
            log.warning("%s: dead-lettered %s[%s]@%s: %s", self.role, m.topic(), m.partition(), m.offset(), reason,
                        extra={"device_id": key.decode(errors="replace") if key else None, "topic": m.topic(),
                               "partition": m.partition()})

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.role}-loop")

    async def _run(self) -> None:
        try:
            while not self._stopping:
                messages = await self.poll_batch()
                if messages:
                    await self.process(messages)
                try:
                    await self.tick()
                except Exception as err:  # a timer's failure (Kafka or PostgreSQL away) waits for the next tick
                    self.last_error = f"tick: {sink_errors.describe(err)}"
                    log.warning("%s: %s", self.role, self.last_error)
        except StageStopping:
            pass

    # The steps of one round, public so a test can stop between any two of them.
    async def poll_batch(self) -> list[Message]:
        messages = await self._consumer.get_batch(self.max_batch, self.batch_wait_s)
        if messages:
            self._batch_owned = self._consumer.owned()
            self._dead_lettered.clear()
        return messages

    async def process(self, messages: Sequence[Message]) -> None:
        """Store the batch (splitting and retrying as needed), then commit it."""
        stored = await self.store(messages)
        await self.commit(stored)
        if self._consumer.paused:
            self._consumer.resume()
            log.info("%s: sink back after %.1fs; resumed", self.role, time.monotonic() - (self._outage_since or 0))
        self._outage_since = None
        self.batches += 1
        self.messages += len(stored)

    async def store(self, messages: Sequence[Message]) -> list[Message]:
        """Hand `messages` to the sink until it took them; returns those still owned (to commit)."""
        backoff = Backoff(RETRY_BASE_S, RETRY_CAP_S)
        pending = list(messages)
        while True:
            pending = self._consumer.still_owned(pending, self._batch_owned)
            if not pending:
                return []
            try:
                await self._keeping_membership(self._store_splitting(pending))
                return pending
            except ConsumerFatalError:
                raise
            except Exception as err:
                if self._stopping:
                    raise StageStopping from err
                await self._sink_down(err, len(pending), backoff)

    async def commit(self, messages: Sequence[Message]) -> None:
        backoff = Backoff(RETRY_BASE_S, RETRY_CAP_S)
        while True:
            owned = self._consumer.still_owned(messages, self._batch_owned)
            try:
                await self._consumer.commit(owned)
                return
            except KafkaException as err:
                if err.args[0].fatal():
                    raise ConsumerFatalError(f"commit failed for good: {err}") from err
                if self._stopping:
                    raise StageStopping from err
                await self._sink_down(err, len(owned), backoff)

    async def _store_splitting(self, messages: Sequence[Message]) -> None:
        try:
            await self.handle(messages)
        except Exception as err:
            if sink_errors.classify(err) is not sink_errors.SinkError.DATA:
                raise
            if len(messages) == 1:
                await self.send_dead_letters([(messages[0], f"refused by the sink: {sink_errors.describe(err)}")])
                return
            self.splits += 1
            mid = len(messages) // 2
            await self._store_splitting(messages[:mid])
            await self._store_splitting(messages[mid:])

    async def _sink_down(self, err: Exception, n: int, backoff: Backoff) -> None:
        """Count and log a transient failure, then wait out the backoff without leaving the group."""
        self.sink_failures += 1
        self.last_error = sink_errors.describe(err)
        delay = backoff.next_delay()
        # Logged when the outage starts, then now and then; `ping` always shows the latest error.
        if self._outage_since is None or backoff.attempts % 10 == 0:
            log.warning("%s: batch of %d not stored (%s); retrying in %.1fs, partitions paused",
                        self.role, n, self.last_error, delay)
        if self._outage_since is None:
            self._outage_since = time.monotonic()
        self._consumer.pause()
        deadline = time.monotonic() + delay
        while not self._stopping and (left := deadline - time.monotonic()) > 0:
            await self._keep_membership(min(left, 0.5))
        if self._stopping:
            raise StageStopping from err

    async def _keep_membership(self, timeout_s: float) -> None:
        """One consume call while paused: serves heartbeats, rebalances and max.poll.interval."""
        stray = await self._consumer.get_batch(self.max_batch, timeout_s=max(timeout_s, 0.05))
        if stray:  # from a partition that was not paused in time: fetch them again later
            self._consumer.rewind(stray)

    async def _keeping_membership(self, work: Awaitable[None]) -> None:
        """Await `work`; if it takes long, pause and keep calling consume until it is done."""
        task = asyncio.ensure_future(work)
        done, _ = await asyncio.wait({task}, timeout=min(KEEPALIVE_AFTER_S, self._consumer.max_poll_interval_s / 4))
        if not done:
            if self._outage_since is None:
                self._outage_since = time.monotonic()
            self._consumer.pause()
            try:
                while not task.done():
                    if self._stopping:
                        raise StageStopping
                    await self._keep_membership(0.2)
            except BaseException:
                task.cancel()
                raise
        await task

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
        outage = None if self._outage_since is None else round(time.monotonic() - self._outage_since, 1)
        return {"role": self.role, "pid": os.getpid(), "batches": self.batches, "messages": self.messages,
                "dead_letters": self.dead_letters, "sink_failures": self.sink_failures, "splits": self.splits,
                "paused": self._consumer.paused, "outage_s": outage, "rebalances": self._consumer.rebalances,
                "consumer_reopened": self._consumer.reopened,
                "last_error": self.last_error}


class StageHost:
    """The body of a stage's Ray actor: owns the process's PostgreSQL pool and Kafka producer."""

    core_class: Callable[[Settings, asyncpg.Pool, AsyncProducer, str], ConsumerStage]
    pool_size = 2

    def __init__(self, settings: Settings, member: str) -> None:
        setup_logging(settings.log_level, member)
        self._settings = settings
        self._member = member
        self._core: ConsumerStage | None = None
        self._producer: AsyncProducer | None = None
        self._pool: asyncpg.Pool | None = None
        freeze_startup_heap()  # actors/heap.py: full collections would walk the import-time heap

    async def start(self) -> None:
        if self._core is None:
            self._pool = await asyncpg.create_pool(self._settings.pg_dsn, min_size=1, max_size=self.pool_size)
            self._producer = AsyncProducer(self._settings.kafka_bootstrap)
            await self._producer.start()
            self._core = self._make_core(self._pool, self._producer)
            await self._core.start()

    def _make_core(self, pool: asyncpg.Pool, producer: AsyncProducer) -> ConsumerStage:
        return self.core_class(self._settings, pool, producer, self._member)

    async def ping(self) -> dict[str, object]:
        if self._core is None:
            raise RuntimeError("start() was not called")
        return {**await self._core.ping(), "node_id": ray.get_runtime_context().get_node_id()}

    async def stop(self) -> None:
        if self._core is not None:
            await self._core.stop()
        if self._producer is not None:
            await self._producer.close()
        if self._pool is not None:
            await self._pool.close()
