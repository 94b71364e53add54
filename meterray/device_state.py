"""Per-device state kept by a device processor, and the pure rules that update it.

No Ray and no I/O here: the processor actor feeds items in, ships what comes out, and checkpoints
`checkpoint()` to PostgreSQL before committing its Kafka offsets.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from meterray.domain import (
    DeviceEvent,
    DeviceStatus,
    PollFailure,
    Quality,
    ReadingBatch,
)
from meterray.quantities import QUANTITIES

OFFLINE_AFTER_FAILURES = 3  # consecutive failed polls; one or two only make a device degraded
FUTURE_TOLERANCE_MS = 5 * 60 * 1000  # readings further ahead than this carry FUTURE_TIMESTAMP


@dataclass(frozen=True, slots=True)
class DeviceCheckpoint:
    """A device's state as a processor checkpoints it; `counters` maps OBIS code → [ts_ms, value]."""

    device_id: str
    status: str
    last_seen: datetime | None
    last_failure_kind: str | None
    last_failure: str | None
    last_failure_at: datetime | None
    consecutive_failures: int
    counters: dict[str, Any]


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

    def apply(self, item: ReadingBatch | PollFailure, now_ms: int) -> tuple[ReadingBatch | None, list[DeviceEvent]]:
        """Validate readings (flags, never drops) or record a failure; returns what to publish."""
        if isinstance(item, PollFailure):
            return None, self._fail(item)
        return self._accept(item, now_ms)

    def _accept(self, batch: ReadingBatch, now_ms: int) -> tuple[ReadingBatch, list[DeviceEvent]]:
        events: list[DeviceEvent] = []
        future = Quality.FUTURE_TIMESTAMP if batch.ts_ms > now_ms + FUTURE_TOLERANCE_MS else 0
        values = []
        for v in batch.values:
            flags = v.quality | future
            q = QUANTITIES.get(v.quantity)
            if q is not None and q.cumulative:
                prev = self.counters.get(v.quantity)
                if prev is None or batch.ts_ms > prev[0]:
                    if prev is not None and v.value < prev[1]:
                        flags |= Quality.COUNTER_DECREASE
                        events.append(self._event(batch.ts_ms, "counter_decrease",
                                                  f"{v.quantity} went from {prev[1]} to {v.value}"))
                    self.counters[v.quantity] = (batch.ts_ms, v.value)
            values.append(v if flags == v.quality else replace(v, quality=int(flags)))
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
        if self.status is DeviceStatus.OFFLINE:
            target = DeviceStatus.OFFLINE
        return self._move_to(target, failure.ts_ms, f"{failure.kind.value}: {failure.detail}")

    def _move_to(self, status: DeviceStatus, ts_ms: int, reason: str) -> list[DeviceEvent]:
        if status is self.status:
            return []
        event = DeviceEvent(self.device_id, ts_ms, "status", status, self.status, reason)
        self.status = status
        return [event]

    def _event(self, ts_ms: int, kind: str, reason: str) -> DeviceEvent:
        return DeviceEvent(self.device_id, ts_ms, kind, self.status, self.status, reason)

    def checkpoint(self) -> DeviceCheckpoint:
        return DeviceCheckpoint(
            self.device_id, self.status.value, _dt(self.last_seen_ms), self.last_failure_kind, self.last_failure,
            _dt(self.last_failure_ms), self.consecutive_failures,
            {q: [ts, v] for q, (ts, v) in self.counters.items()},
        )

    @classmethod
    def from_checkpoint(cls, row: DeviceCheckpoint) -> "DeviceState":
        return cls(
            row.device_id, DeviceStatus(row.status), _ms(row.last_seen), row.last_failure_kind, row.last_failure,
            _ms(row.last_failure_at), row.consecutive_failures,
            {q: (int(ts), float(v)) for q, (ts, v) in row.counters.items()},
        )


def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _ms(dt: datetime | None) -> int | None:
    return None if dt is None else int(dt.timestamp() * 1000)
