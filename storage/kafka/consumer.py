"""An asyncio face on confluent-kafka's consumer for one consumer group with manual commits.

The blocking `consume` runs in a worker thread so the actor keeps answering status calls; every
call on the consumer is made from the owning coroutine, one at a time.

A stage whose sink is down keeps its group membership by pausing its partitions and going on
calling `get_batch` (which then returns nothing): librdkafka evicts a member that does not call
consume within `max.poll.interval.ms`, and a paused member may call it as often as it likes.
Each assigned partition carries an epoch, bumped whenever it is (re)assigned, so a stage can tell
which messages of a batch it still owns after a rebalance and never commits a revoked partition.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

log = logging.getLogger(__name__)

Owned = dict[tuple[str, int], int]  # (topic, partition) → epoch of its assignment

# Errors that no retry cures: the consumer is misconfigured or not allowed in. Everything else a
# consumer reports (all brokers down while Kafka restarts, transport, coordinator moves, a topic
# not yet created) passes with time, so `get_batch` logs it once and returns nothing.
_FATAL_CODES = {
    KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._INVALID_ARG, KafkaError._UNSUPPORTED_FEATURE,
    KafkaError.FENCED_INSTANCE_ID,  # another member took our group.instance.id: we are the stale one
}

COMMIT_ATTEMPTS = 3  # a commit that timed out or met a loading coordinator is tried again, then raised


CLOSE_TIMEOUT_S = 10.0


class ConsumerFatalError(RuntimeError):
    """The consumer cannot go on; the stage dies and its supervisor replaces it."""


class AsyncConsumer:
    def __init__(self, bootstrap: str, group_id: str, topics: Sequence[str], **config: Any) -> None:
        self._reported: set[int] = set()  # error codes already logged since the last good consume
        self._config = {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            # A fetch waits for 64 KiB or 100 ms, whichever comes first: under load one fetch carries a
            # hundred records instead of one producer batch each, which saves the broker and this
            # process a request per batch; at a trickle a record waits at most 100 ms.
            "fetch.wait.max.ms": 100,
            "fetch.min.bytes": 64 * 1024,
            "session.timeout.ms": 15000,  # a dead member's partitions move after this at most
            # Client-level errors (brokers unreachable, transport) arrive here, not as messages.
            "error_cb": self._on_error,
            **config,
        }
        self._topics = list(topics)
        self._fatal: KafkaError | None = None
        # librdkafka's default; the stage must call consume more often than this to stay in the group.
        self.max_poll_interval_s = float(config.get("max.poll.interval.ms", 300_000)) / 1000
        self.rebalances = 0  # bumped whenever partitions come or go; owners of per-partition state watch it
        self.reopened = 0  # consumers replaced after the group session was lost
        self._epochs: Owned = {}
        self._next_epoch = 0
        self._paused = False
        self._lost = False
        self._consumer = self._open()
        self._closed = False

    def _open(self) -> Consumer:
        consumer = Consumer(self._config)
        consumer.subscribe(self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        return consumer

    # Rebalance callbacks run inside consume(), on its worker thread, while the owner awaits it.
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.rebalances += 1
        for tp in partitions:
            self._next_epoch += 1
            self._epochs[(tp.topic, tp.partition)] = self._next_epoch
        if self._paused and partitions:
            # A partition that arrives during an outage stays paused too. Assigning it here ourselves
            # (the library then skips its own assign) lets us pause it before anything is fetched.
            try:
                consumer.incremental_assign(partitions)
            except KafkaException:  # an eager assignment strategy was configured: the list is the whole assignment
                consumer.assign(partitions)
            consumer.pause(partitions)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.rebalances += 1
        for tp in partitions:
            self._epochs.pop((tp.topic, tp.partition), None)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The group session expired (no coordinator for session.timeout.ms: Kafka stopped or cut off).
        # librdkafka 2.16 then rejoins and is handed its partitions again, but after a broker restart
        # that consumer never fetches another message (seen here: assigned, fetch started at the
        # committed offsets, then silence for minutes). A fresh consumer under the same static
        # member id takes over at once, so the next get_batch replaces this one.
        self._on_revoke(consumer, partitions)
        self._lost = True

    async def get_batch(self, max_messages: int = 1000, timeout_s: float = 0.5) -> list[Message]:
        """Messages that carry data. Notices (partition EOF) are dropped; transient errors are logged
        once and return nothing; only errors no retry can cure raise `ConsumerFatalError`."""
        if self._lost:
            await self._reopen()
        try:
            msgs = await asyncio.to_thread(self._consumer.consume, max_messages, timeout_s)
        except KafkaException as err:
            self._check(err.args[0])
            return []
        except RuntimeError as err:  # consume() on a closed consumer
            raise ConsumerFatalError(f"Kafka consumer unusable: {err}") from err
        if self._fatal is not None:
            raise ConsumerFatalError(f"Kafka consumer error: {self._fatal}")
        out = []
        for m in msgs:
            problem = m.error()
            if problem is None:
                out.append(m)
            elif problem.code() != KafkaError._PARTITION_EOF:
                self._check(problem)
        if out and self._reported:
            log.info("Kafka consumer recovered")
            self._reported.clear()
        return out

    async def _reopen(self) -> None:
        """Replace a consumer whose group session was lost: close it (it owns nothing any more; a
        static member leaves no group on close) and subscribe a new one with the same settings."""
        self._lost = False
        self.reopened += 1
        log.warning("Kafka consumer: group session lost (no coordinator for session.timeout.ms); "
                    "reopening the consumer, it resumes from the committed offsets")
        try:
            await asyncio.wait_for(asyncio.to_thread(self._consumer.close), CLOSE_TIMEOUT_S)
        except (TimeoutError, KafkaException, RuntimeError) as err:
            log.warning("Kafka consumer: the lost consumer did not close cleanly (%s); dropping it", err)
        self._consumer = self._open()

    def _on_error(self, err: KafkaError) -> None:
        try:
            self._check(err)
        except ConsumerFatalError:
            self._fatal = err  # raised by the next get_batch, on the owner's coroutine

    def _check(self, err: KafkaError) -> None:
        if err.fatal() or err.code() in _FATAL_CODES:
            raise ConsumerFatalError(f"Kafka consumer error: {err}")
        if err.code() not in self._reported:
            self._reported.add(err.code())
            log.warning("Kafka consumer: %s (transient, will keep trying)", err)

    def lag(self, topic: str, partition: int, committed: int | None = None) -> int | None:
        """Messages of an assigned partition not consumed yet, from the high watermark librdkafka caches
        with every fetch (no broker call); None while unknown (nothing fetched yet). `committed`: the
        position to assume while nothing has been consumed since the assignment (else the earliest,
        as `auto.offset.reset` says)."""
        tp = TopicPartition(topic, partition)
        try:
            low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            position = self._consumer.position([tp])[0].offset
        except (KafkaException, RuntimeError):
            return None
        if position < 0:  # nothing consumed since the assignment: the committed offset, else the earliest
            position = committed if committed is not None else low if low >= 0 else 0 if high == 0 else -1
        if high < 0 or position < 0:
            return None
        return max(0, high - position)

    async def committed(self, partitions: Sequence[tuple[str, int]],
                        timeout_s: float = 5.0) -> dict[tuple[str, int], int]:
        """The group's committed offsets of `partitions` (a broker call, in a worker thread)."""
        tps = [TopicPartition(t, p) for t, p in partitions]
        try:
            found = await asyncio.to_thread(self._consumer.committed, tps, timeout_s)
        except (KafkaException, RuntimeError):
            return {}
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}

    def owned(self) -> Owned:
        """A snapshot of the current assignment and its epochs; compare later with `still_owned`."""
        return dict(self._epochs)

    def still_owned(self, messages: Sequence[Message], since: Owned) -> list[Message]:
        """The messages whose partition has stayed assigned (same epoch) since `since` was taken."""
        return [m for m in messages if (key := _tp(m)) is not None and key in since
                and self._epochs.get(key) == since[key]]

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Stop fetching every assigned partition (and any assigned while paused) until `resume`.
        Positions stay after the last message handed out, so nothing is skipped or repeated."""
        self._paused = True
        assigned = self._consumer.assignment()
        if assigned:
            self._consumer.pause(assigned)

    def resume(self) -> None:
        self._paused = False
        assigned = self._consumer.assignment()
        if assigned:
            self._consumer.resume(assigned)

    def rewind(self, messages: Sequence[Message]) -> None:
        """Put messages back: seek each partition to its first message here, so they come again."""
        first: dict[tuple[str, int], int] = {}
        for m in messages:
            key = _tp(m)
            offset = m.offset()
            if key is not None and offset is not None and (key not in first or offset < first[key]):
                first[key] = offset
        for (topic, partition), offset in first.items():
            tp = TopicPartition(topic, partition, offset)
            try:
                self._consumer.seek(tp)
                if self._paused:
                    self._consumer.pause([tp])
            except KafkaException as err:  # revoked meanwhile: its next owner starts at the committed offset
                log.info("could not rewind %s[%d] to %d: %s", topic, partition, offset, err)

    async def commit(self, messages: Sequence[Message]) -> None:
        """Commit the position after the last message of each partition in `messages`."""
        last: dict[tuple[str, int], int] = {}
        for m in messages:
            key, offset = _tp(m), m.offset()
            if key is not None and offset is not None:
                last[key] = max(offset, last.get(key, -1))
        if last:
            offsets = [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
            for attempt in range(COMMIT_ATTEMPTS):
                try:
                    await asyncio.to_thread(self._consumer.commit, offsets=offsets, asynchronous=False)
                    return
                except KafkaException as err:
                    code = err.args[0].code()
                    if code == KafkaError._NO_OFFSET:
                        return
                    # A coordinator still loading or slow to answer: committing the same offsets again is
                    # harmless, and the caller's batch is already in its sink.
                    if attempt + 1 == COMMIT_ATTEMPTS or not (err.args[0].retriable() or code == KafkaError._TIMED_OUT):
                        raise
                await asyncio.sleep(0.5 * (attempt + 1))

    def member_id(self) -> str | None:
        return self._consumer.memberid()

    async def close(self) -> None:
        """Leave the group without committing anything more."""
        if not self._closed:
            self._closed = True
            await asyncio.to_thread(self._consumer.close)


def _tp(m: Message) -> tuple[str, int] | None:
    topic, partition = m.topic(), m.partition()
    return None if topic is None or partition is None else (topic, partition)
