"""The health state machine: transitions, their reasons, hysteresis, silence and partner reports."""
from __future__ import annotations

from meterray.domain import DeviceEvent, DeviceStatus, FailureKind, StatusReport
from meterray.health import DEFAULT_TIMEOUT_MS, Data, Health, HealthPolicy, Link

NOW = 1_764_000_000_000
S = 1000
POLICY = HealthPolicy.for_interval(1.0)  # 1 s polls: timeout max(3 s, 5 s) = 5 s
ON, DEG, STALE, OFF = DeviceStatus.ONLINE, DeviceStatus.DEGRADED, DeviceStatus.STALE, DeviceStatus.OFFLINE


def ok(h: Health, t: int, **kw: object) -> DeviceEvent | None:
    args = {"frozen": False, "clock_offset_ms": -200.0, "reversal": False, **kw}
    return h.on_readings(t, POLICY, **args)  # type: ignore[arg-type]


def fail(h: Health, t: int, kind: FailureKind = FailureKind.TIMEOUT) -> DeviceEvent | None:
    return h.on_failure(kind, "no answer", t, POLICY)


def moves(events: list[DeviceEvent | None]) -> list[tuple[DeviceStatus, DeviceStatus]]:
    return [(e.previous, e.status) for e in events if e is not None]


def test_default_timeouts_follow_the_interval() -> None:
    assert HealthPolicy.for_interval(1.0).timeout_ms == 5_000
    assert HealthPolicy.for_interval(60.0).timeout_ms == 180_000
    assert HealthPolicy.for_interval(None).timeout_ms == DEFAULT_TIMEOUT_MS
    assert HealthPolicy.for_interval(60.0, timeout_s=600).timeout_ms == 600_000


def test_offline_needs_both_the_timeout_and_failed_cycles_and_recovery_needs_two_answers() -> None:
    h = Health("m")
    events = [ok(h, NOW)]
    events += [fail(h, NOW + i * S) for i in range(1, 8)]
    assert moves(events) == [(DeviceStatus.UNKNOWN, ON), (ON, DEG), (DEG, OFF)]
    assert [e.ts_ms for e in events if e is not None] == [NOW, NOW + 2 * S, NOW + 5 * S]  # offline at the timeout
    assert h.reasons == ("timeout",) and h.link is Link.DOWN
    assert ok(h, NOW + 8 * S) is None and h.status is OFF  # one answer is not a recovery
    event = ok(h, NOW + 9 * S)
    assert event is not None and (event.previous, event.status) == (OFF, ON) and h.error_ratio == 0.0


def test_a_slow_poll_cadence_fails_twice_before_offline_however_long_it_took() -> None:
    slow = HealthPolicy.for_interval(60.0)  # timeout 3 min
    h = Health("m")
    h.on_readings(NOW, slow, frozen=False, clock_offset_ms=None, reversal=False)
    assert h.on_failure(FailureKind.TIMEOUT, "x", NOW + 200 * S, slow) is None  # past the timeout, one cycle
    event = h.on_failure(FailureKind.TIMEOUT, "x", NOW + 260 * S, slow)
    assert event is not None and event.status is OFF


def test_single_failures_do_not_flap_but_a_high_error_ratio_degrades_with_hysteresis() -> None:
    h = Health("m")
    events = [ok(h, NOW)]
    t = NOW
    for _ in range(10):  # one poll in three fails: 33 % errors, never two in a row
        events += [ok(h, t + S), ok(h, t + 2 * S), fail(h, t + 3 * S)]
        t += 3 * S
    assert moves(events) == [(DeviceStatus.UNKNOWN, ON), (ON, DEG)]
    assert h.reasons == ("error_ratio",)
    recovered = [ok(h, t + i * S) for i in range(1, 30)]
    first = next(i for i, e in enumerate(recovered) if e is not None)
    assert moves(recovered) == [(DEG, ON)] and h.error_ratio < 0.1
    assert first > 5  # leaves below 10 %, not at the 20 % it entered above


def test_silence_takes_a_device_offline_only_once_and_never_before_its_timeout() -> None:
    h = Health("m", watch_since_ms=NOW)  # registered, never sent anything
    assert h.on_silence(NOW + 4 * S, POLICY) is None
    event = h.on_silence(NOW + 5 * S, POLICY)
    assert event is not None and (event.previous, event.status) == (DeviceStatus.UNKNOWN, OFF)
    assert event.reasons == ("no_data",) and h.data is Data.MISSING
    assert h.on_silence(NOW + 60 * S, POLICY) is None  # one event per transition


def test_frozen_data_is_stale_with_the_link_up() -> None:
    h = Health("m")
    ok(h, NOW)
    event = ok(h, NOW + S, frozen=True)
    assert event is not None and event.status is STALE and event.reasons == ("frozen_value",)
    assert (h.link, h.data) == (Link.UP, Data.FROZEN)
    event = ok(h, NOW + 2 * S)
    assert event is not None and event.status is ON and h.data is Data.FRESH


def test_clock_drift_degrades_with_hysteresis() -> None:
    h = Health("m")
    ok(h, NOW)
    assert moves([ok(h, NOW + S, clock_offset_ms=40_000.0)]) == [(ON, DEG)] and h.reasons == ("clock_drift",)
    assert ok(h, NOW + 2 * S, clock_offset_ms=20_000.0) is None  # still above the 15 s it leaves at
    assert moves([ok(h, NOW + 3 * S, clock_offset_ms=1_000.0)]) == [(DEG, ON)]


def test_an_unexplained_counter_reversal_degrades_for_one_timeout() -> None:
    h = Health("m")
    ok(h, NOW)
    assert moves([ok(h, NOW + S, reversal=True)]) == [(ON, DEG)] and h.reasons == ("counter_reversal",)
    assert ok(h, NOW + 3 * S) is None
    assert moves([ok(h, NOW + 7 * S)]) == [(DEG, ON)]


def test_partner_reports_feed_the_same_machine() -> None:
    h = Health("m")
    ok(h, NOW)
    report = StatusReport("m", NOW + S, "partner-x", online=True, battery_low=True)
    assert moves([h.on_report(report, POLICY)]) == [(ON, DEG)] and h.reasons == ("low_battery",)
    off = h.on_report(StatusReport("m", NOW + 2 * S, "partner-x", online=False), POLICY)
    assert off is not None and off.status is OFF and off.reasons == ("partner_offline",)
    back = h.on_report(StatusReport("m", NOW + 3 * S, "partner-x", online=True, battery_low=False), POLICY)
    assert back is not None and back.status is ON
    # The partner says online, but no readings come: the data is missing, the link is not down.
    event = h.on_silence(NOW + 7 * S, POLICY)
    assert event is not None and event.status is STALE and event.reasons == ("no_data",)
