"""Validation rules on one device's readings: every finding is a flag, no value is dropped or changed."""
from __future__ import annotations

from meterray.domain import Quality, ReadingBatch, Value
from meterray.validation import Memory, check, classify_decrease

NOW = 1_764_000_000_000
ENERGY, POWER, VOLTS = "1-0:1.8.0", "1-0:16.7.0", "1-0:32.7.0"


def batch(ts: int, energy: float, power: float = 1000.0, volts: float = 230.0) -> ReadingBatch:
    return ReadingBatch("m-1", ts, "test", (Value(ENERGY, energy, "kWh", 0), Value(POWER, power, "W", 0),
                                            Value(VOLTS, volts, "V", 0)))


def flags(b: ReadingBatch) -> dict[str, int]:
    return {v.quantity: v.quality for v in b.values}


def feed(memory: Memory, n: int, start_kwh: float = 100.0, every_ms: int = 1000, kwh_per_step: float = 0.001) -> int:
    """n clean readings, a steady load with noisy power; returns the next timestamp."""
    ts = NOW
    for i in range(n):
        out = check(memory, batch(ts, start_kwh + i * kwh_per_step, 1000.0 + i, 230.0 + i / 100), ts, ts)
        assert flags(out.batch) == {ENERGY: 0, POWER: 0, VOLTS: 0}, (i, out)
        ts += every_ms
    return ts


def test_clean_readings_are_passed_through_unchanged() -> None:
    memory = Memory()
    b = batch(NOW, 100.0)
    out = check(memory, b, NOW, NOW)
    assert out.batch is b and out.flags == 0 and not out.frozen


def test_a_redelivered_reading_is_a_duplicate_an_older_new_one_is_out_of_order() -> None:
    memory = Memory()
    ts = feed(memory, 5)
    again = check(memory, batch(NOW + 2000, 100.002, 1002.0, 230.02), ts, ts)
    assert set(flags(again.batch).values()) == {Quality.DUPLICATE}  # no counter decrease: counters kept
    older = check(memory, batch(NOW - 60_000, 99.0), ts, NOW - 59_000)
    assert set(flags(older.batch).values()) == {Quality.OUT_OF_ORDER}
    # The out-of-order reading is remembered too: its own redelivery is a duplicate.
    again = check(memory, batch(NOW - 60_000, 99.0), ts, NOW - 59_000)
    assert set(flags(again.batch).values()) == {Quality.DUPLICATE}
    assert memory.counters[ENERGY][:2] == (NOW + 4000, 100.004)  # neither moved the counter


def test_late_future_and_clock_drift_against_receive_time() -> None:
    memory = Memory()
    ts = feed(memory, 3)
    late = check(memory, batch(ts, 100.003, 1.0, 231.0), ts + 120_000, ts + 120_000)  # received 2 min later
    assert set(flags(late.batch).values()) == {Quality.LATE}
    ahead = check(memory, batch(ts + 45_000, 100.004, 2.0, 232.0), ts, ts)  # stamped 45 s after it arrived
    assert set(flags(ahead.batch).values()) == {Quality.CLOCK_DRIFT}
    assert ahead.clock_offset_ms == 45_000
    future = check(memory, batch(ts + 3_600_000, 100.005, 3.0, 233.0), ts, None)
    assert set(flags(future.batch).values()) == {Quality.FUTURE_TIMESTAMP}


def test_counter_decreases_are_classified() -> None:
    assert classify_decrease(999_990.0, 5.0, False) == Quality.ROLLOVER  # MTX wraps at 1 000 000.00
    assert classify_decrease(12_345.0, 0.5, False) == Quality.METER_RESET  # a new meter
    assert classify_decrease(12_345.0, 12.345, False) == Quality.SCALE_ERROR  # kWh read as... a thousandth
    assert classify_decrease(12_345.0, 12_300.0, False) == Quality.SUSPECT  # no explanation
    assert classify_decrease(12_345.0, 12_300.0, True) == Quality.METER_RESET  # announced by the device
    memory = Memory()
    ts = feed(memory, 3)
    out = check(memory, batch(ts, 99.0), ts, ts)
    assert flags(out.batch)[ENERGY] == Quality.COUNTER_DECREASE | Quality.SUSPECT and out.reversal
    assert out.batch.values[0].value == 99.0  # flagged, never altered


def test_a_scale_jump_and_a_spike_are_flagged_and_do_not_teach_the_rate() -> None:
    memory = Memory()
    ts = feed(memory, 20, start_kwh=1000.0)
    scaled = check(memory, batch(ts, 1_000_019.0 * 1.0, 5.0, 230.0), ts, ts)  # Wh reported as kWh
    assert flags(scaled.batch)[ENERGY] == Quality.SCALE_ERROR
    memory = Memory()
    ts = feed(memory, 20, start_kwh=1000.0)
    spike = check(memory, batch(ts, 1000.019 + 5.0, 7.0, 230.0), ts, ts)  # 5 kWh in a second: 18 MW
    assert flags(spike.batch)[ENERGY] == Quality.SPIKE
    normal = check(memory, batch(ts + 1000, 1005.02, 8.0, 230.5), ts + 1000, ts + 1000)
    assert flags(normal.batch)[ENERGY] == 0


def test_frozen_values_are_flagged_after_three_identical_readings_spanning_ten_seconds() -> None:
    memory = Memory()
    ts = feed(memory, 3)
    found = []
    for i in range(5):  # the meter stopped refreshing: the same power and voltage every 5 s
        out = check(memory, batch(ts + i * 5000, 100.003, 1500.0, 229.5), ts + i * 5000, ts + i * 5000)
        found.append(out.frozen)
        if out.frozen:
            assert flags(out.batch) == {ENERGY: 0, POWER: Quality.FROZEN, VOLTS: Quality.FROZEN}
    assert found == [False, False, True, True, True]
    moving = check(memory, batch(ts + 30_000, 100.004, 1501.0, 229.5), ts + 30_000, ts + 30_000)
    assert not moving.frozen and flags(moving.batch)[POWER] == 0


def test_a_genuine_zero_is_not_frozen() -> None:
    memory = Memory()
    for i in range(10):
        out = check(memory, batch(NOW + i * 5000, 100.0, 0.0, 0.0), NOW + i * 5000, NOW + i * 5000)
        assert not out.frozen and out.flags == 0


def test_memory_round_trips_through_json() -> None:
    memory = Memory()
    feed(memory, 20)
    import orjson

    counters = orjson.loads(orjson.dumps({q: list(c) for q, c in memory.counters.items()}))
    assert Memory.from_json(counters, orjson.loads(orjson.dumps(memory.to_json()))) == memory
