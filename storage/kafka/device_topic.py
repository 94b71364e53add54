"""The compacted `devices` topic: one record per device, keyed by its id, the latest wins; a deleted device
is a tombstone (null value). Consumers keep a copy of the device metadata from it (the ClickHouse
writer); the device catalog actor publishes it from devices.devices.

Reading it whole (`read_table`) is reading every partition from the beginning to its end, with an
assigned consumer and no group: it is a table, not a stream of work.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from typing import cast

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from meterray.device_info import DeviceInfo
from storage.kafka import topics
from storage.kafka.producer import OutMessage

_FIELDS = ("device_id", "name", "protocol", "profile", "organisation_id", "timezone")


def encode(device: DeviceInfo) -> bytes:
    return orjson.dumps({"device_id": device.device_id, "name": device.name, "protocol": device.protocol,
                         "profile": device.profile,
                         "organisation_id": str(device.organisation_id) if device.organisation_id else None,
                         "timezone": device.timezone})


def decode(raw: bytes) -> DeviceInfo:
    """Raises ValueError (with what is wrong) on a record that is not a device."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise ValueError(f"not JSON: {err}") from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in _FIELDS[:4]):
        raise ValueError(f"a device record has string fields {', '.join(_FIELDS[:4])}")
    org, tz = doc.get("organisation_id"), doc.get("timezone")
    if org is not None and not isinstance(org, str) or tz is not None and not isinstance(tz, str):
        raise ValueError("organisation_id and timezone are strings or null")
    return DeviceInfo(doc["device_id"], doc["name"], doc["protocol"], doc["profile"],
                      uuid.UUID(org) if org else None, tz)


def messages(topic: str, partitions: int, changed: Iterable[DeviceInfo],
             deleted: Iterable[str]) -> Iterator[OutMessage]:
    """Records for changed devices and tombstones for deleted ones, partitioned by device like readings."""
    for d in changed:
        yield topic, topics.partition_for(d.device_id, partitions), d.device_id.encode(), encode(d)
    for device_id in deleted:
        # A tombstone: a null value (Kafka's delete marker for a compacted topic; confluent-kafka sends None
        # as null, OutMessage only types the usual case).
        yield cast(OutMessage, (topic, topics.partition_for(device_id, partitions), device_id.encode(), None))


def read_table(bootstrap: str, topic: str, timeout_s: float = 60.0) -> dict[str, bytes]:
    """Every device's latest record (tombstoned devices left out), read to the end of every partition.
    Blocking: call it in a worker thread."""
    follower = TableFollower(bootstrap, topic, timeout_s)
    try:
        table: dict[str, bytes] = {}
        for device_id, value, _ in follower.catch_up():
            if value is None:
                table.pop(device_id, None)
            else:
                table[device_id] = value
        return table
    finally:
        follower.close()


Record = tuple[str, bytes | None, int]  # (device id, its record or None for a tombstone, offset)


class TableFollower:
    """Follows the whole topic from its beginning, with an assigned consumer and no group (nothing to
    commit: a compacted topic read again from the start is the same table). Blocking calls: run them in a
    worker thread, one at a time."""

    def __init__(self, bootstrap: str, topic: str, timeout_s: float = 30.0) -> None:
        self._topic, self._timeout_s = topic, timeout_s
        # group.id only because librdkafka wants one; nothing joins or commits (assign, no subscribe).
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"devices-{uuid.uuid4().hex[:8]}",
                                   "enable.auto.commit": False, "enable.partition.eof": True})
        self._assigned = False

    def _ends(self) -> dict[int, int]:
        """The end offset of every partition; a topic just created has no leaders for a moment: retried."""
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                meta = self._consumer.list_topics(self._topic, timeout=self._timeout_s).topics[self._topic]
                if meta.error is not None:
                    raise KafkaException(meta.error)
                return {p: self._consumer.get_watermark_offsets(TopicPartition(self._topic, p),
                                                                timeout=self._timeout_s)[1]
                        for p in meta.partitions}
            except KafkaException as err:
                if err.args[0].fatal() or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _assign(self) -> dict[int, int]:
        ends = self._ends()
        meta_partitions = ends.keys()
        if not self._assigned:
            self._consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in meta_partitions])
            self._assigned = True
        return ends

    def catch_up(self) -> list[Record]:
        """Every record from the beginning to the current end of each partition."""
        ends = self._assign()
        pending = {p for p, end in ends.items() if end > 0}
        out: list[Record] = []
        deadline = time.monotonic() + self._timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self._topic}: partitions {sorted(pending)} not read to their end")
            for m in self._consumer.consume(1000, 0.5):
                err, partition, offset = m.error(), m.partition(), m.offset()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(partition)
                    continue
                key = m.key()
                if key is not None and offset is not None:
                    out.append((key.decode(errors="replace"), m.value(), offset))
                if offset is not None and partition is not None and offset + 1 >= ends[partition]:
                    pending.discard(partition)
        return out

    def poll(self, max_records: int = 1000) -> list[Record]:
        """What arrived since the last call, without waiting."""
        if not self._assigned:
            return self.catch_up()
        out: list[Record] = []
        for m in self._consumer.consume(max_records, 0):
            key, offset = m.key(), m.offset()
            if m.error() is None and key is not None and offset is not None:
                out.append((key.decode(errors="replace"), m.value(), offset))
        return out

    def close(self) -> None:
        self._consumer.close()
