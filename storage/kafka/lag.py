"""Consumer-group lag: how many records of a topic (in all, or per partition) a group has not committed yet."""
from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition


@dataclass(frozen=True, slots=True)
class GroupLag:
    group: str
    topic: str
    lag: int | None  # records past the group's committed offsets, all partitions; None if Kafka did not answer
    partitions: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PartitionLags:
    group: str
    topic: str
    lags: dict[int, int]  # partition → records past the group's committed offset; empty if Kafka did not answer
    error: str | None = None


def group_lag(bootstrap: str, group: str, topic: str, timeout_s: float = 5.0) -> GroupLag:
    """Blocking (run it in a thread from async code). A partition without a committed offset counts
    from its low watermark (what `auto.offset.reset=earliest` would read)."""
    p = partition_lags(bootstrap, group, topic, timeout_s)
    if p.error is not None:
        return GroupLag(group, topic, None, 0, p.error)
    return GroupLag(group, topic, sum(p.lags.values()), len(p.lags))


def partition_lags(bootstrap: str, group: str, topic: str, timeout_s: float = 5.0) -> PartitionLags:
    """The lag of each partition of `topic` for `group` (blocking, as group_lag)."""
    # A consumer that never subscribes does not join the group: it only reads the group's offsets.
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "socket.timeout.ms": int(timeout_s * 1000)})
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            return PartitionLags(group, topic, {}, f"topic {topic!r} not found")
        parts = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        committed = consumer.committed(parts, timeout=timeout_s)
        lags: dict[int, int] = {}
        for tp in committed:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=timeout_s)
            lags[tp.partition] = max(0, high - (tp.offset if tp.offset >= 0 else low))
        return PartitionLags(group, topic, lags)
    except KafkaException as err:
        return PartitionLags(group, topic, {}, str(err.args[0]))
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str, timeout_s: float = 5.0) -> dict[int, int]:
    """The high watermark of each partition of `topic` (blocking): where the next record will land."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "meterray-end-offsets",
                         "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            raise KafkaException(f"topic {topic!r} not found")
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1]
                for p in sorted(meta.partitions)}
    finally:
        consumer.close()


def caught_up(bootstrap: str, group: str, topic: str, ends: dict[int, int], timeout_s: float = 5.0) -> int:
    """How many records before `ends` (end_offsets taken earlier) `group` has not committed yet (blocking);
    0: everything up to then is through that stage."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "socket.timeout.ms": int(timeout_s * 1000)})
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in ends], timeout=timeout_s)
        low = {tp.partition: consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=timeout_s)[0]
               for tp in committed if tp.offset < 0}
        return sum(max(0, ends[tp.partition] - (tp.offset if tp.offset >= 0 else low[tp.partition]))
                   for tp in committed)
    finally:
        consumer.close()
