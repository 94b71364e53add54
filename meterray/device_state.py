"""Per-device state kept by a device processor, and the pure rules that update it.

No Ray and no I/O here: the processor actor feeds items in, ships what comes out, and checkpoints
`checkpoint()` to PostgreSQL before committing its Kafka offsets.

Idempotence: a state remembers the input position (Kafka partition, offset) of the last item it
applied, and the checkpoint keeps it. A device's items all come from one partition, in offset
order, so an item at or below that position was applied already — by this processor before a
retry, or by one that checkpointed and died before committing — and is skipped, never applied twice.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from meterray.domain import (
    DeviceEvent,
    DeviceStatus,
    FailureKind,
    PollFailure,
    Quality,
    ReadingBatch,
    Value,
)
from meterray.quantities import QUANTITIES

OFFLINE_AFTER_FAILURES = 3  # consecutive failed polls; one or two only make a device degraded
FUTURE_TOLERANCE_MS = 5 * 60 * 1000  # readings further ahead than this carry FUTURE_TIMESTAMP
_CUMULATIVE = frozenset(obis for obis, q in QUANTITIES.items() if q.cumulative)


@dataclass(frozen=True, slots=True, order=True)
class SourcePosition:
    """Where an item came from: a partition of the input topic, the offset in it, and the topic.

    The topic is part of the position: offsets of another topic (recreated, or read under another
    prefix) are not comparable, and comparing them would skip that topic's items as "already
    applied" — a silent loss. None: unknown (a checkpoint written before positions named their topic).
    """

    partition: int
    offset: int
    topic: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceCheckpoint:
    """A device's state as a processor checkpoints it; `counters` maps OBIS code → [ts_ms, value];
    `source_topic`/`source_partition`/`source_offset` are the input position of the last item applied."""

    device_id: str
    status: str
    last_seen: datetime | None
    last_failure_kind: str | None
    last_failure: str | None
    last_failure_at: datetime | None
    consecutive_failures: int
    counters: dict[str, Any]
    source_partition: int | None = None
    source_offset: int | None = None
    source_topic: str | None = None


@dataclass(slots=True)
class DeviceState:
    device_id: str
    status: DeviceStatus = DeviceStatus.UNKNOWN
    last_seen_ms: int | None = None
    last_failure_kind: str | None = None
    last_failure: str | None = None
    last_failure_ms: int | None = None
    consecutive_failures: int = 0
    counters: dict[str, tuple[int, float]] = field(default_factory=dict)  # OBIS → (ts_ms, value)
    position: SourcePosition | None = None  # input position of the last item applied

    def applies(self, at: SourcePosition) -> bool:
        """False for an item at or below the last applied position of the same topic and partition. An
        item from another topic or partition applies (offsets there are not comparable)."""
        p = self.position
        if p is None or at.partition != p.partition:
            return True
        if p.topic is not None and at.topic is not None and at.topic != p.topic:
            return True
        return at.offset > p.offset

    def apply(self, item: ReadingBatch | PollFailure, now_ms: int,
              at: SourcePosition | None = None) -> tuple[ReadingBatch | None, list[DeviceEvent]]:
        """Validate readings (flags, never drops) or record a failure; returns what to publish.

        With `at`, an item already applied (see `applies`) changes nothing and publishes nothing."""
        if at is not None:
            if not self.applies(at):
                return None, []
            self.position = at
        if isinstance(item, PollFailure):
            return None, self._fail(item)
        return self._accept(item, now_ms)

    def _accept(self, batch: ReadingBatch, now_ms: int) -> tuple[ReadingBatch, list[DeviceEvent]]:
        events: list[DeviceEvent] = []
        future = Quality.FUTURE_TIMESTAMP if batch.ts_ms > now_ms + FUTURE_TOLERANCE_MS else 0
        values = []
        for v in batch.values:
            flags = v.quality | future
            if v.quantity in _CUMULATIVE:
                prev = self.counters.get(v.quantity)
                if prev is None or batch.ts_ms > prev[0]:
                    if prev is not None and v.value < prev[1]:
                        flags |= Quality.COUNTER_DECREASE
                        events.append(self._event(batch.ts_ms, "counter_decrease",
                                                  f"{v.quantity} went from {prev[1]} to {v.value}"))
                    self.counters[v.quantity] = (batch.ts_ms, v.value)
            values.append(v if flags == v.quality else Value(v.quantity, v.value, v.unit, int(flags)))
        if self.last_seen_ms is None or batch.ts_ms > self.last_seen_ms:
            self.last_seen_ms = batch.ts_ms
        self.consecutive_failures = 0
        events += self._move_to(DeviceStatus.ONLINE, batch.ts_ms, "readings arrive")
        return ReadingBatch(batch.device_id, batch.ts_ms, batch.source, tuple(values)), events

    def _fail(self, failure: PollFailure) -> list[DeviceEvent]:
        self.consecutive_failures += 1
        self.last_failure_kind = failure.kind.value
        self.last_failure = failure.detail
        self.last_failure_ms = failure.ts_ms
        target = DeviceStatus.OFFLINE if self.consecutive_failures >= OFFLINE_AFTER_FAILURES else DeviceStatus.DEGRADED
        # A partner that says a meter is offline has seen it so: no need to count our own failed polls.
        if self.status is DeviceStatus.OFFLINE or failure.kind is FailureKind.DEVICE_OFFLINE:
            target = DeviceStatus.OFFLINE
        if failure.kind is FailureKind.DEVICE_ALARM:  # an error code, low battery or tamper: it still measures
            target = DeviceStatus.DEGRADED
        return self._move_to(target, failure.ts_ms, f"{failure.kind.value}: {failure.detail}")

    def _move_to(self, status: DeviceStatus, ts_ms: int, reason: str) -> list[DeviceEvent]:
        if status is self.status:
            return []
        event = DeviceEvent(self.device_id, ts_ms, "status", status, self.status, reason)
        self.status = status
        return [event]

    def _event(self, ts_ms: int, kind: str, reason: str) -> DeviceEvent:
        return DeviceEvent(self.device_id, ts_ms, kind, self.status, self.status, reason)

    def copy(self) -> "DeviceState":
        """A working copy: a batch applies to copies, which replace the originals once published."""
        return replace(self, counters=dict(self.counters))

    def checkpoint(self) -> DeviceCheckpoint:
        return DeviceCheckpoint(
            self.device_id, self.status.value, _dt(self.last_seen_ms), self.last_failure_kind, self.last_failure,
            _dt(self.last_failure_ms), self.consecutive_failures,
            {q: [ts, v] for q, (ts, v) in self.counters.items()},
            None if self.position is None else self.position.partition,
            None if self.position is None else self.position.offset,
            None if self.position is None else self.position.topic,
        )

    @classmethod
    def from_checkpoint(cls, row: DeviceCheckpoint) -> "DeviceState":
        position = (None if row.source_partition is None or row.source_offset is None
                    else SourcePosition(row.source_partition, row.source_offset, row.source_topic))
        return cls(
            row.device_id, DeviceStatus(row.status), _ms(row.last_seen), row.last_failure_kind, row.last_failure,
            _ms(row.last_failure_at), row.consecutive_failures,
            {q: (int(ts), float(v)) for q, (ts, v) in row.counters.items()}, position,
        )


def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _ms(dt: datetime | None) -> int | None:
    return None if dt is None else int(dt.timestamp() * 1000)
