from meterray.device_state import DeviceState, SourcePosition
from meterray.domain import DeviceStatus, FailureKind, PollFailure, Quality, ReadingBatch, Value
from meterray.health import HealthPolicy

POLICY = HealthPolicy.for_interval(1.0)  # 1 s polls: offline after 5 s and two failed cycles

NOW = 1_764_000_000_000


def batch(ts: int, energy: float, power: float = 1000.0) -> ReadingBatch:
    return ReadingBatch("m-1", ts, "test", (Value("1-0:1.8.0", energy, "kWh", 0), Value("1-0:1.7.0", power, "W", 0)))


def failure(ts: int, kind: FailureKind = FailureKind.TIMEOUT) -> PollFailure:
    return PollFailure("m-1", ts, "test", kind, "no answer within 0.5 s")


def test_first_readings_bring_device_online_and_record_last_seen() -> None:
    state = DeviceState("m-1")
    out, events = state.apply(batch(NOW, 100.0), NOW)
    assert out == batch(NOW, 100.0)
    assert [(e.previous, e.status) for e in events] == [(DeviceStatus.UNKNOWN, DeviceStatus.ONLINE)]
    assert state.last_seen_ms == NOW


def test_decreasing_counter_is_flagged_not_dropped() -> None:
    state = DeviceState("m-1")
    state.apply(batch(NOW, 100.0), NOW)
    out, events = state.apply(batch(NOW + 1000, 3.0, power=50.0), NOW)
    assert out is not None
    flags = {v.quantity: v.quality for v in out.values}
    # power may go down freely; a drop to under a tenth is a reset or a replaced meter
    assert flags == {"1-0:1.8.0": Quality.COUNTER_DECREASE | Quality.METER_RESET, "1-0:1.7.0": 0}
    assert [e.kind for e in events] == ["counter_decrease"]
    assert state.counters["1-0:1.8.0"][:2] == (NOW + 1000, 3.0)


def test_replayed_batch_is_not_flagged_twice() -> None:
    state = DeviceState("m-1")
    state.apply(batch(NOW, 100.0), NOW)
    state.apply(batch(NOW + 1000, 101.0), NOW)
    out, events = state.apply(batch(NOW, 100.0), NOW)  # delivered again by its source
    assert out is not None and all(v.quality == Quality.DUPLICATE for v in out.values)  # no COUNTER_DECREASE
    assert events == []
    assert state.counters["1-0:1.8.0"][:2] == (NOW + 1000, 101.0)


def test_future_timestamp_is_flagged() -> None:
    out, _ = DeviceState("m-1").apply(batch(NOW + 3_600_000, 1.0), NOW)
    assert out is not None and all(v.quality & Quality.FUTURE_TIMESTAMP for v in out.values)


def test_failures_degrade_then_take_offline_then_readings_recover() -> None:
    state = DeviceState("m-1", policy=POLICY)
    state.apply(batch(NOW, 1.0), NOW)
    statuses = []
    for i in range(6):  # one failed poll a second: degraded at the second, offline once 5 s passed
        _, events = state.apply(failure(NOW + (i + 1) * 1000), NOW)
        statuses += [(i + 1, e.status) for e in events]
    assert statuses == [(2, DeviceStatus.DEGRADED), (5, DeviceStatus.OFFLINE)]
    assert state.last_failure_kind == "timeout" and state.consecutive_failures == 6
    assert state.health.reasons == ("timeout",)
    _, events = state.apply(batch(NOW + 10_000, 2.0, power=900.0), NOW)
    assert events == [] and state.status is DeviceStatus.OFFLINE  # one answer is not a recovery yet
    _, events = state.apply(batch(NOW + 11_000, 2.1, power=950.0), NOW)
    assert [(e.previous, e.status) for e in events] == [(DeviceStatus.OFFLINE, DeviceStatus.ONLINE)]
    assert state.consecutive_failures == 0


def test_slots_the_poller_skipped_leave_health_alone() -> None:
    state = DeviceState("m-1", policy=POLICY)
    state.apply(batch(NOW, 1.0), NOW)
    before = state.checkpoint()
    for i in range(6):  # six slots the shard ran past: its own lateness, nothing the meter did
        out, events = state.apply(failure(NOW + (i + 1) * 1000, FailureKind.SKIPPED), NOW)
        assert out is None and events == []
    assert state.checkpoint() == before
    assert state.status is DeviceStatus.ONLINE and state.consecutive_failures == 0


def test_checkpoint_round_trip() -> None:
    state = DeviceState("m-1")
    state.apply(batch(NOW, 100.0), NOW)
    state.apply(failure(NOW + 1000, FailureKind.EXCEPTION_CODE), NOW)
    assert DeviceState.from_checkpoint(state.checkpoint()) == state


def test_an_item_at_or_below_the_applied_position_changes_nothing() -> None:
    state = DeviceState("m-1")
    state.apply(batch(NOW, 100.0), NOW, SourcePosition(2, 10))
    state.apply(failure(NOW + 1000), NOW, SourcePosition(2, 11))
    snapshot = state.copy()
    for offset in (10, 11):  # redelivered: a retried batch, or a replay after a crash before the commit
        assert state.apply(failure(NOW + 1000), NOW, SourcePosition(2, offset)) == (None, [])
        assert not state.applies(SourcePosition(2, offset))
    assert state == snapshot and state.consecutive_failures == 1
    out, events = state.apply(batch(NOW + 2000, 50.0), NOW, SourcePosition(2, 12))
    assert out is not None and out.values[0].quality == Quality.COUNTER_DECREASE | Quality.SUSPECT
    assert state.position == SourcePosition(2, 12)


def test_an_item_from_another_partition_applies() -> None:
    # After the topic was repartitioned offsets of different partitions are not comparable.
    state = DeviceState("m-1")
    state.apply(failure(NOW), NOW, SourcePosition(1, 500))
    assert state.applies(SourcePosition(3, 2))
    state.apply(failure(NOW + 1000), NOW, SourcePosition(3, 2))
    assert state.consecutive_failures == 2 and state.position == SourcePosition(3, 2)


def test_an_item_from_another_topic_applies_whatever_its_offset() -> None:
    # Fresh topics (recreated, or another prefix) start at offset 0: skipping their items as "already
    # applied" because a previous topic had reached offset 16,000 would lose every one of them.
    state = DeviceState("m-1")
    state.apply(failure(NOW), NOW, SourcePosition(0, 16_000, "old.readings.raw"))
    assert not state.applies(SourcePosition(0, 5, "old.readings.raw"))
    assert state.applies(SourcePosition(0, 5, "new.readings.raw"))
    state.apply(failure(NOW + 1000), NOW, SourcePosition(0, 5, "new.readings.raw"))
    assert state.consecutive_failures == 2 and state.position == SourcePosition(0, 5, "new.readings.raw")
    assert DeviceState.from_checkpoint(state.checkpoint()) == state


def test_a_working_copy_does_not_touch_the_original() -> None:
    state = DeviceState("m-1")
    state.apply(batch(NOW, 100.0), NOW, SourcePosition(0, 1))
    work = state.copy()
    work.apply(batch(NOW + 1000, 101.0), NOW, SourcePosition(0, 2))
    assert state.counters["1-0:1.8.0"][:2] == (NOW, 100.0) and state.position == SourcePosition(0, 1)


def test_checkpoint_keeps_the_position() -> None:
    state = DeviceState("m-1")
    state.apply(batch(NOW, 100.0), NOW, SourcePosition(3, 42))
    cp = state.checkpoint()
    assert (cp.source_partition, cp.source_offset) == (3, 42)
    assert DeviceState.from_checkpoint(cp) == state


def test_a_partners_device_status_as_the_http_mapping_sends_it_feeds_health() -> None:
    # protocols/http/mapping.py: offline and alarms travel as failures of their own kinds, "fine" as
    # a batch without values.
    state = DeviceState("m-1", policy=POLICY)
    state.apply(batch(NOW, 1.0), NOW)
    _, events = state.apply(PollFailure("m-1", NOW + 1000, "partner", FailureKind.DEVICE_ALARM, "battery low (7 %)"),
                            NOW)
    assert [(e.status, e.reasons) for e in events] == [(DeviceStatus.DEGRADED, ("partner_error",))]
    _, events = state.apply(PollFailure("m-1", NOW + 2000, "partner", FailureKind.DEVICE_OFFLINE, "reports lost"),
                            NOW)
    assert [(e.status, e.reasons) for e in events] == [(DeviceStatus.OFFLINE, ("partner_offline",))]
    assert state.consecutive_failures == 0  # a status, not a failed poll
    _, events = state.apply(ReadingBatch("m-1", NOW + 3000, "partner", ()), NOW)
    assert [e.status for e in events] == [DeviceStatus.ONLINE]
