"""Per-device state kept by a device processor, and the pure rules that update it.

No Ray and no I/O here: the processor actor feeds items in, ships what comes out, and checkpoints
`checkpoint()` to PostgreSQL before committing its Kafka offsets.

Idempotence: a state remembers the input position (Kafka partition, offset) of the last item it
applied, and the checkpoint keeps it. A device's items all come from one partition, in offset
order, so an item at or below that position was applied already — by this processor before a
retry, or by one that checkpointed and died before committing — and is skipped, never applied twice.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from meterray import validation
from meterray.domain import DeviceEvent, DeviceStatus, FailureKind, PollFailure, ReadingBatch, StatusReport
from meterray.health import DEFAULT_POLICY, Data, Health, HealthPolicy, Link
from meterray.validation import FUTURE_TOLERANCE_MS, Memory

__all__ = ["FUTURE_TOLERANCE_MS", "DeviceCheckpoint", "DeviceState", "SourcePosition"]
_PARTNER_STATUS = frozenset({FailureKind.DEVICE_OFFLINE, FailureKind.DEVICE_ALARM})


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
    """A device's state as a processor checkpoints it; `counters` maps OBIS code → [ts_ms, value, rate];
    `memory` holds the rest of validation's memory and the health fields the API does not show;
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
    reasons: tuple[str, ...] = ()
    link: str = Link.UNKNOWN.value
    data: str = Data.UNKNOWN.value
    last_success: datetime | None = None
    error_ratio: float = 0.0
    clock_offset_s: float | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    swept_at: datetime | None = None  # the last inactivity sweep that changed the state


class DeviceState:
    """Health (meterray.health) and validation memory (meterray.validation) of one device, and the
    input position of the last item applied. `policy` (its timing) is configuration, not state: the
    processor sets it from the device's poll interval and it is not checkpointed."""

    __slots__ = ("device_id", "health", "memory", "policy", "position", "swept_ms")

    def __init__(self, device_id: str, health: Health | None = None, memory: Memory | None = None,
                 position: SourcePosition | None = None, policy: HealthPolicy = DEFAULT_POLICY,
                 swept_ms: int | None = None) -> None:
        self.device_id = device_id
        self.health = health if health is not None else Health(device_id)
        self.memory = memory if memory is not None else Memory()
        self.position = position
        self.policy = policy
        self.swept_ms = swept_ms

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, DeviceState) and self.device_id == other.device_id and self.health == other.health
                and self.memory == other.memory and self.position == other.position
                and self.swept_ms == other.swept_ms)

    def __repr__(self) -> str:
        return f"DeviceState({self.device_id!r}, {self.health!r}, {self.memory!r}, {self.position!r})"

    # Shortcuts the processor, the API and the tests read.
    @property
    def status(self) -> DeviceStatus:
        return self.health.status

    @property
    def consecutive_failures(self) -> int:
        return self.health.consecutive_failures

    @property
    def last_failure_kind(self) -> str | None:
        return self.health.last_failure_kind

    @property
    def last_seen_ms(self) -> int | None:
        return self.health.last_seen_ms

    @property
    def counters(self) -> dict[str, tuple[int, float, float]]:
        return self.memory.counters

    def applies(self, at: SourcePosition) -> bool:
        """False for an item at or below the last applied position of the same topic and partition. An
        item from another topic or partition applies (offsets there are not comparable)."""
        p = self.position
        if p is None or at.partition != p.partition:
            return True
        if p.topic is not None and at.topic is not None and at.topic != p.topic:
            return True
        return at.offset > p.offset

    def apply(self, item: ReadingBatch | PollFailure | StatusReport, now_ms: int,
              at: SourcePosition | None = None, receive_ms: int | None = None
              ) -> tuple[ReadingBatch | None, list[DeviceEvent]]:
        """Validate readings (flags, never drops), record a failure or a partner's report; returns what
        to publish. `receive_ms`: when the source handed the item over (its Kafka timestamp).

        With `at`, an item already applied (see `applies`) changes nothing and publishes nothing."""
        if at is not None:
            if not self.applies(at):
                return None, []
            self.position = at
        health = self.health
        if isinstance(item, PollFailure) and item.kind is FailureKind.SKIPPED:
            return None, []  # the poller was late, not the device: the slot is accounted for, health unchanged
        if isinstance(item, PollFailure) and item.kind in _PARTNER_STATUS:
            # How protocols/http/mapping.py carries a partner's device status: offline, or an alarm
            # (error code, low battery, tamper) in the detail. A status signal, not a failed poll.
            offline = item.kind is FailureKind.DEVICE_OFFLINE
            item = StatusReport(item.device_id, item.ts_ms, item.source, online=not offline,
                                error_code=None if offline else item.detail)
        if isinstance(item, PollFailure):
            event = health.on_failure(item.kind, item.detail, item.ts_ms, self.policy, receive_ms)
            return None, [] if event is None else [event]
        if isinstance(item, StatusReport):
            if item.meter_replaced:
                self.memory.reset_announced = True
            event = health.on_report(item, self.policy, receive_ms)
            return None, [] if event is None else [event]
        events: list[DeviceEvent] = []
        if not item.values and (health.partner_online is False or health.partner_error):
            # A batch without values is a partner's "the device is fine" (protocols/http/mapping.py).
            fine = health.on_report(StatusReport(item.device_id, item.ts_ms, item.source, online=True, error_code=""),
                                    self.policy, receive_ms)
            if fine is not None:
                events.append(fine)
        policy = self.policy
        late_ms = validation.LATE_MIN_MS
        if policy.interval_ms is not None:
            late_ms = max(late_ms, validation.LATE_INTERVALS * policy.interval_ms)
        found = validation.check(self.memory, item, now_ms, receive_ms, late_ms)
        events += [DeviceEvent(self.device_id, item.ts_ms, "counter_decrease", health.status, health.status, r)
                   for r in found.resets]
        event = health.on_readings(item.ts_ms, policy, frozen=found.frozen, clock_offset_ms=found.clock_offset_ms,
                                   reversal=found.reversal, received_ms=receive_ms)
        if event is not None:
            events.append(event)
        return found.batch, events

    def sweep(self, now_ms: int) -> DeviceEvent | None:
        """The inactivity check (see Health.on_silence); `now_ms` is the partition's stream time."""
        self.swept_ms = now_ms
        return self.health.on_silence(now_ms, self.policy)

    def copy(self) -> DeviceState:
        """A working copy: a batch applies to copies, which replace the originals once published."""
        return DeviceState(self.device_id, self.health.copy(), self.memory.copy(), self.position, self.policy,
                           self.swept_ms)

    def checkpoint(self) -> DeviceCheckpoint:
        h, p = self.health, self.position
        extra: dict[str, Any] = {
            "last_activity_ms": h.last_activity_ms, "failing_since_ms": h.failing_since_ms,
            "successes_in_row": h.successes_in_row, "clock_drift": h.clock_drift, "frozen": h.frozen,
            "reversal_ms": h.reversal_ms, "partner_online": h.partner_online, "partner_error": h.partner_error,
            "battery_low": h.battery_low, "tamper": h.tamper, "partner_report_ms": h.partner_report_ms,
            "watch_since_ms": h.watch_since_ms}
        return DeviceCheckpoint(
            self.device_id, h.status.value, _dt(h.last_seen_ms), h.last_failure_kind, h.last_failure,
            _dt(h.last_failure_ms), h.consecutive_failures,
            {q: [ts, v, r] for q, (ts, v, r) in self.memory.counters.items()},
            None if p is None else p.partition, None if p is None else p.offset, None if p is None else p.topic,
            h.reasons, h.link.value, h.data.value, _dt(h.last_success_ms), h.error_ratio,
            None if h.clock_offset_ms is None else h.clock_offset_ms / 1000,
            {**self.memory.to_json(), "health": extra}, _dt(self.swept_ms),
        )

    @classmethod
    def from_checkpoint(cls, row: DeviceCheckpoint, policy: HealthPolicy = DEFAULT_POLICY) -> DeviceState:
        position = (None if row.source_partition is None or row.source_offset is None
                    else SourcePosition(row.source_partition, row.source_offset, row.source_topic))
        extra = row.memory.get("health") or {}
        known = {f.name for f in fields(Health)}
        health = Health(
            row.device_id, DeviceStatus(row.status), tuple(row.reasons), Link(row.link), Data(row.data),
            _ms(row.last_seen), _ms(row.last_success), None, row.last_failure_kind, row.last_failure,
            _ms(row.last_failure_at), row.consecutive_failures, None, 0, row.error_ratio,
            None if row.clock_offset_s is None else row.clock_offset_s * 1000,
        )
        for name, value in extra.items():
            if name in known:
                setattr(health, name, value)
        if health.last_activity_ms is None:  # a checkpoint written before health kept it
            health.last_activity_ms = max((t for t in (health.last_seen_ms, health.last_failure_ms) if t is not None),
                                          default=None)
        return cls(row.device_id, health, Memory.from_json(row.counters, row.memory), position, policy,
                   _ms(row.swept_at))


def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _ms(dt: datetime | None) -> int | None:
    return None if dt is None else int(dt.timestamp() * 1000)
