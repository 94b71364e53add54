"""Device health: one state machine per device, fed by the signals its device processor sees.

Pure rules, no I/O and no clock of their own: every signal says what time it is (the item's
timestamp, or the stream time of the processor's inactivity sweep), so replaying the same items
from a checkpoint gives the same states and the same transitions.

Signals: readings arrived (`on_readings`, with what validation found), a poll failed
(`on_failure`), a partner reported the device's status (`on_report`), and nothing arrived for a
while (`on_silence`, from the processor's sweep over every device it owns, silent ones included).

States (energy_domain.md 2.2, after ThingsBoard's inactivity timeout and Wiren Board's
`device_timeout_ms` + `device_max_fail_cycles`):
- UNKNOWN until the first signal;
- OFFLINE: nothing succeeded for the device's timeout AND at least OFFLINE_FAILED_CYCLES cycles
  failed or were missed. Either alone is not enough (Wiren Board requires both "to avoid
  flapping"), and leaving OFFLINE takes RECOVER_SUCCESSES readings in a row. A partner that reports
  the device offline makes it OFFLINE too (its own observation of the link);
- STALE: the link answers but the data is not fresh: frozen values, or a partner reports the device
  online while no readings come;
- DEGRADED: readings arrive but the error ratio is high, two polls in a row failed, the clock
  drifts, a counter went backwards for no reason, or a partner reports an error, a low battery or
  tamper;
- ONLINE otherwise.
Hysteresis: the error ratio enters DEGRADED above 20 % and leaves below 10 %; clock drift enters
above 30 s and leaves below 15 s. Only a change of status is a transition (one event each); a
change of reasons within a status is kept in `reasons` but announces nothing.

Liveness and freshness are separate fields: `link` (up: the last exchange succeeded; down: it
failed, or nothing arrived at all) and `data` (fresh, frozen, missing).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum

from meterray.domain import DeviceEvent, DeviceStatus, FailureKind, StatusReport


class Reason(StrEnum):
    TIMEOUT = "timeout"
    REFUSED = "refused"
    CONNECTION_LOST = "connection_lost"
    EXCEPTION_CODE = "exception_code"
    BAD_RESPONSE = "bad_response"
    AUTH_FAILED = "auth_failed"
    CONFIGURATION = "configuration"
    HOST_UNRESOLVED = "host_unresolved"
    NO_DATA = "no_data"
    FROZEN_VALUE = "frozen_value"
    CLOCK_DRIFT = "clock_drift"
    COUNTER_REVERSAL = "counter_reversal"
    ERROR_RATIO = "error_ratio"
    PARTNER_OFFLINE = "partner_offline"
    PARTNER_ERROR = "partner_error"
    LOW_BATTERY = "low_battery"
    TAMPER = "tamper"


FAILURE_REASON = {
    FailureKind.TIMEOUT: Reason.TIMEOUT, FailureKind.CONNECTION_REFUSED: Reason.REFUSED,
    FailureKind.CONNECTION_LOST: Reason.CONNECTION_LOST, FailureKind.EXCEPTION_CODE: Reason.EXCEPTION_CODE,
    FailureKind.BAD_RESPONSE: Reason.BAD_RESPONSE, FailureKind.AUTH: Reason.AUTH_FAILED,
    FailureKind.CONFIGURATION: Reason.CONFIGURATION, FailureKind.HOST_UNRESOLVED: Reason.HOST_UNRESOLVED,
    FailureKind.DEVICE_OFFLINE: Reason.PARTNER_OFFLINE, FailureKind.DEVICE_ALARM: Reason.PARTNER_ERROR,
}
_FAILURE_REASONS = frozenset(FAILURE_REASON.values())
# Failures in which the device itself answered (so it was seen), as opposed to silence or refusal.
_DEVICE_ANSWERED = frozenset({FailureKind.EXCEPTION_CODE, FailureKind.BAD_RESPONSE})

OFFLINE_FAILED_CYCLES = 2  # wb-mqtt-serial README: device_max_fail_cycles (example 2), with device_timeout_ms
DEGRADED_AFTER_FAILURES = 2  # one failed poll is noise; two in a row are a symptom
RECOVER_SUCCESSES = 2  # readings in a row that take a device out of OFFLINE
TIMEOUT_INTERVALS = 3  # energy_domain.md 2.2: offline after 3 x the expected interval ...
MIN_TIMEOUT_MS = 5_000  # ... but never sooner than this (a 1 s poll with a slow answer is not dead)
DEFAULT_TIMEOUT_MS = 600_000  # a device of unknown cadence: ThingsBoard's DEFAULT_INACTIVITY_TIMEOUT
ERROR_RATIO_ALPHA = 0.1  # exponentially weighted: about the last 10 outcomes
ERROR_RATIO_ENTER, ERROR_RATIO_LEAVE = 0.2, 0.1  # energy_domain.md 2.2: degraded above 20 %
CLOCK_DRIFT_ENTER_MS, CLOCK_DRIFT_LEAVE_MS = 30_000, 15_000  # 2.2: "30 s warn" (the limit itself UNVERIFIED)


class Link(StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


class Data(StrEnum):
    UNKNOWN = "unknown"
    FRESH = "fresh"
    FROZEN = "frozen"
    MISSING = "missing"  # nothing for the timeout, though the link may be up


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """Per-device timing: the expected interval (poll or push period) and the inactivity timeout."""

    interval_ms: int | None
    timeout_ms: int

    @classmethod
    def for_interval(cls, interval_s: float | None, timeout_s: float | None = None) -> HealthPolicy:
        """The default timeout from the device's poll or push interval, unless one is given."""
        if timeout_s is not None:
            return cls(None if interval_s is None else int(interval_s * 1000), int(timeout_s * 1000))
        if interval_s is None:
            return cls(None, DEFAULT_TIMEOUT_MS)
        interval_ms = int(interval_s * 1000)
        return cls(interval_ms, max(TIMEOUT_INTERVALS * interval_ms, MIN_TIMEOUT_MS))

    def missed_cycles(self, silent_ms: int) -> int:
        """Cycles a device of this cadence missed in `silent_ms` of silence."""
        if self.interval_ms is None or self.interval_ms <= 0:
            return OFFLINE_FAILED_CYCLES if silent_ms >= self.timeout_ms else 0
        return silent_ms // self.interval_ms


DEFAULT_POLICY = HealthPolicy.for_interval(None)


@dataclass(slots=True)
class Health:
    """The health of one device. Mutable (a processor applies a batch to a copy: `copy()` is cheap,
    every field is immutable)."""

    device_id: str
    status: DeviceStatus = DeviceStatus.UNKNOWN
    reasons: tuple[str, ...] = ()
    link: Link = Link.UNKNOWN
    data: Data = Data.UNKNOWN
    last_seen_ms: int | None = None  # anything came from the device (readings, an answer, a report)
    last_success_ms: int | None = None  # the last readings
    last_activity_ms: int | None = None  # anything arrived about it (a failure too): silence is measured from here
    last_failure_kind: str | None = None
    last_failure: str | None = None
    last_failure_ms: int | None = None
    consecutive_failures: int = 0
    failing_since_ms: int | None = None  # first failure of the current run
    successes_in_row: int = 0
    error_ratio: float = 0.0
    clock_offset_ms: float | None = None  # reading timestamp minus receive time, last seen
    clock_drift: bool = False
    frozen: bool = False
    reversal_ms: int | None = None  # last counter reversal validation could not explain
    partner_online: bool | None = None
    partner_error: str | None = None
    battery_low: bool = False
    tamper: bool = False
    partner_report_ms: int | None = None
    watch_since_ms: int | None = None  # when someone started expecting data (registration, ownership)

    def copy(self) -> Health:
        """A copy for a working state (every field is immutable, so a shallow one); a processor makes
        one per device per batch, 2,000 a second: `dataclasses.replace` costs several times this."""
        other = object.__new__(Health)
        for name in _SLOTS:
            object.__setattr__(other, name, getattr(self, name))
        return other

    # -- signals ----------------------------------------------------------------------------------
    def on_readings(self, ts_ms: int, policy: HealthPolicy, *, frozen: bool, clock_offset_ms: float | None,
                    reversal: bool, received_ms: int | None = None) -> DeviceEvent | None:
        """`received_ms`: when the item was received (its Kafka timestamp); silence is measured in
        receive time, so a backfill of old readings is activity, not silence."""
        if self.last_seen_ms is None or ts_ms > self.last_seen_ms:
            self.last_seen_ms = ts_ms
        if self.last_success_ms is None or ts_ms > self.last_success_ms:
            self.last_success_ms = ts_ms
        self._heard(received_ms or ts_ms)
        self.consecutive_failures = 0
        self.failing_since_ms = None
        self.successes_in_row += 1
        self.error_ratio -= ERROR_RATIO_ALPHA * self.error_ratio
        self.link = Link.UP
        if self.partner_online is False:  # data from it: whoever said it was offline is out of date
            self.partner_online = None
        self.frozen = frozen
        self.data = Data.FROZEN if frozen else Data.FRESH
        if clock_offset_ms is not None:
            self.clock_offset_ms = clock_offset_ms
            limit = CLOCK_DRIFT_LEAVE_MS if self.clock_drift else CLOCK_DRIFT_ENTER_MS
            self.clock_drift = clock_offset_ms > limit
        if reversal:
            self.reversal_ms = ts_ms
        return self._settle(ts_ms, policy, "readings arrive")

    def on_failure(self, kind: FailureKind, detail: str, ts_ms: int, policy: HealthPolicy,
                   received_ms: int | None = None) -> DeviceEvent | None:
        self.consecutive_failures += 1
        if self.failing_since_ms is None:
            self.failing_since_ms = ts_ms
        self.successes_in_row = 0
        self.error_ratio += ERROR_RATIO_ALPHA * (1.0 - self.error_ratio)
        self.last_failure_kind = kind.value
        self.last_failure = detail
        self.last_failure_ms = ts_ms
        self._heard(received_ms or ts_ms)
        if kind in _DEVICE_ANSWERED and (self.last_seen_ms is None or ts_ms > self.last_seen_ms):
            self.last_seen_ms = ts_ms
        self.link = Link.DOWN
        return self._settle(ts_ms, policy, f"{kind.value}: {detail}")

    def on_report(self, report: StatusReport, policy: HealthPolicy,
                  received_ms: int | None = None) -> DeviceEvent | None:
        ts = report.ts_ms
        self.partner_report_ms = ts if self.partner_report_ms is None else max(ts, self.partner_report_ms)
        if report.online is not None:
            self.partner_online = report.online
            if report.online and (self.last_seen_ms is None or ts > self.last_seen_ms):
                self.last_seen_ms = ts
        if report.error_code is not None:
            self.partner_error = report.error_code or None
        if report.battery_low is not None:
            self.battery_low = report.battery_low
        if report.tamper is not None:
            self.tamper = report.tamper
        self._heard(received_ms or ts)
        return self._settle(ts, policy, f"reported by {report.source or 'a partner'}")

    def on_silence(self, now_ms: int, policy: HealthPolicy) -> DeviceEvent | None:
        """The sweep: nothing may have arrived for a while. `now_ms` is the stream time of the
        device's partition (the processor's clock only once it has caught up with its input)."""
        return self._settle(now_ms, policy, "nothing arrived", sweep=True)

    def _heard(self, at_ms: int) -> None:
        if self.last_activity_ms is None or at_ms > self.last_activity_ms:
            self.last_activity_ms = at_ms

    # -- the rules --------------------------------------------------------------------------------
    def _settle(self, now_ms: int, policy: HealthPolicy, why: str, sweep: bool = False) -> DeviceEvent | None:
        status, reasons = self._target(now_ms, policy, sweep)
        self.reasons = reasons
        if status is self.status:
            return None
        previous, self.status = self.status, status
        if status is DeviceStatus.ONLINE or not reasons:
            text = why
        elif self.last_failure_kind and reasons[0] in _FAILURE_REASONS:
            text = f"{', '.join(reasons)} ({self.last_failure_kind}: {self.last_failure})"
        else:
            text = f"{', '.join(reasons)} ({why})"
        return DeviceEvent(self.device_id, now_ms, "status", status, previous, text, reasons)

    def _target(self, now_ms: int, policy: HealthPolicy, sweep: bool) -> tuple[DeviceStatus, tuple[str, ...]]:
        failure = (FAILURE_REASON.get(FailureKind(self.last_failure_kind), Reason.NO_DATA)
                   if self.last_failure_kind else Reason.NO_DATA)
        # Silence (the sweep only; an item is itself something heard): nothing at all about the device
        # since `quiet_since` (one that never sent anything: since it was registered or taken over).
        quiet_since = self.last_activity_ms if self.last_activity_ms is not None else self.watch_since_ms
        silent_ms = 0 if quiet_since is None or not sweep else max(0, now_ms - quiet_since)
        silent = silent_ms >= policy.timeout_ms and policy.missed_cycles(silent_ms) >= OFFLINE_FAILED_CYCLES
        if silent:
            self.link = Link.DOWN
            if self.data is not Data.UNKNOWN or self.last_success_ms is None:
                self.data = Data.MISSING
        # Failing: polls keep failing for the timeout (since the last success, or the first failure).
        since = self.last_success_ms if self.last_success_ms is not None else self.failing_since_ms
        failing = (self.consecutive_failures >= OFFLINE_FAILED_CYCLES and since is not None
                   and now_ms - since >= policy.timeout_ms)
        if self.partner_online is False:
            return DeviceStatus.OFFLINE, (Reason.PARTNER_OFFLINE,)
        if failing:
            return DeviceStatus.OFFLINE, (failure,)
        if silent and self.partner_online is not True:
            return DeviceStatus.OFFLINE, (Reason.NO_DATA if self.consecutive_failures == 0 else failure,)
        if (self.status is DeviceStatus.OFFLINE and self.successes_in_row < RECOVER_SUCCESSES
                and self.reasons != (Reason.PARTNER_OFFLINE,)):  # the partner's own word needs no hysteresis
            return DeviceStatus.OFFLINE, self.reasons  # not back until it answered several times in a row
        if self.status is DeviceStatus.OFFLINE:
            self.error_ratio = 0.0  # the outage was OFFLINE's story; the ratio measures a working link
        if self.frozen:
            return DeviceStatus.STALE, (Reason.FROZEN_VALUE,)
        # What the partner says is wrong with the device (an error code, low battery, tamper) outranks
        # "no data": a meter behind a status-only path never sends readings, and its alarm is the news.
        alarms = [reason for reason, on in ((Reason.PARTNER_ERROR, self.partner_error),
                                            (Reason.LOW_BATTERY, self.battery_low), (Reason.TAMPER, self.tamper)) if on]
        no_readings = self.last_success_ms is None or now_ms - self.last_success_ms >= policy.timeout_ms
        if self.partner_online and no_readings and silent_ms < policy.timeout_ms and not alarms:
            self.data = Data.MISSING
            return DeviceStatus.STALE, (Reason.NO_DATA,)
        degraded: list[str] = []
        if self.consecutive_failures >= DEGRADED_AFTER_FAILURES:
            degraded.append(failure)
        threshold = ERROR_RATIO_LEAVE if Reason.ERROR_RATIO in self.reasons else ERROR_RATIO_ENTER
        if self.error_ratio > threshold:
            degraded.append(Reason.ERROR_RATIO)
        if self.clock_drift:
            degraded.append(Reason.CLOCK_DRIFT)
        if self.reversal_ms is not None and now_ms - self.reversal_ms < policy.timeout_ms:
            degraded.append(Reason.COUNTER_REVERSAL)
        degraded += alarms
        if degraded:
            return DeviceStatus.DEGRADED, tuple(degraded)
        if self.last_success_ms is None:
            return self.status if self.status is not DeviceStatus.OFFLINE else DeviceStatus.UNKNOWN, ()
        return DeviceStatus.ONLINE, ()


_SLOTS = tuple(f.name for f in fields(Health))
