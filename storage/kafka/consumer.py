"""An asyncio face on confluent-kafka's consumer for one consumer group with manual commits.

The blocking `consume` runs in a worker thread so the actor keeps answering status calls; every
call on the consumer is made from the owning coroutine, one at a time.
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition


class AsyncConsumer:
    def __init__(self, bootstrap: str, group_id: str, topics: Sequence[str], **config: Any) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                "fetch.wait.max.ms": 100,
                "session.timeout.ms": 15000,  # a dead member's partitions move after this at most
                **config,
            }
        )
        self.rebalances = 0  # bumped whenever partitions come or go; owners of per-partition state watch it
        self._consumer.subscribe(list(topics), on_assign=self._rebalanced, on_revoke=self._rebalanced,
                                 on_lost=self._rebalanced)
        self._closed = False

    def _rebalanced(self, _consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        self.rebalances += 1

    async def get_batch(self, max_messages: int = 1000, timeout_s: float = 0.5) -> list[Message]:
        """Messages that carry data; broker-side notices (partition EOF) are dropped, errors raised."""
        msgs = await asyncio.to_thread(self._consumer.consume, max_messages, timeout_s)
        out = []
        for m in msgs:
            err = m.error()
            if err is None:
                out.append(m)
            elif err.code() != KafkaError._PARTITION_EOF:
                if err.fatal() or not err.retriable():
                    raise RuntimeError(f"Kafka consumer error: {err}")
        return out

    async def commit(self, messages: Sequence[Message]) -> None:
        """Commit the position after the last message of each partition in `messages`."""
        last: dict[tuple[str, int], int] = {}
        for m in messages:
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            if topic is not None and partition is not None and offset is not None:
                last[(topic, partition)] = offset
        if last:
            offsets = [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
            await asyncio.to_thread(self._consumer.commit, offsets=offsets, asynchronous=False)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await asyncio.to_thread(self._consumer.close)
