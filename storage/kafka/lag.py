"""Consumer-group lag: how many records of a topic a group has not committed yet."""
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


def group_lag(bootstrap: str, group: str, topic: str, timeout_s: float = 5.0) -> GroupLag:
    """Blocking (run it in a thread from async code). A partition without a committed offset counts
    from its low watermark (what `auto.offset.reset=earliest` would read)."""
    # A consumer that never subscribes does not join the group: it only reads the group's offsets.
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "socket.timeout.ms": int(timeout_s * 1000)})
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            return GroupLag(group, topic, None, 0, f"topic {topic!r} not found")
        parts = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        committed = consumer.committed(parts, timeout=timeout_s)
        lag = 0
        for tp in committed:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=timeout_s)
            lag += max(0, high - (tp.offset if tp.offset >= 0 else low))
        return GroupLag(group, topic, lag, len(parts))
    except KafkaException as err:
        return GroupLag(group, topic, None, 0, str(err.args[0]))
    finally:
        consumer.close()
