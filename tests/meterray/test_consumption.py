"""Half-hour consumption from counter readings: worked examples, and properties on random counter
series with resets, rollovers and gaps (hypothesis)."""
from __future__ import annotations

import itertools
import random
from bisect import bisect_right
from datetime import date, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterray.consumption import (
    LINEAR_MAX_INTERVALS,
    ROLLOVER_BAND,
    CounterReading,
    Drop,
    Gap,
    Method,
    Status,
    derive,
    max_gap_ms,
    refillable,
    summed,
    thin,
)
from meterray.domain import Quality
from meterray.intervals import HALF_HOUR_MS, Size, half_hours, local_date, local_midnight_ms, zone

MIN = 60_000
HOUR = 60 * MIN
MOSCOW = zone("Europe/Moscow")
ZONES = ["Europe/Moscow", "Asia/Vladivostok", "Asia/Kamchatka", "Europe/Kaliningrad", "Europe/Berlin",
         "America/New_York", "Asia/Kathmandu", "Australia/Lord_Howe", "America/Havana"]
FAR_FUTURE = 10**15  # "now" long after the readings: the device is not reporting any more


def midnight(day: date, tz: str = "Europe/Moscow") -> int:
    return local_midnight_ms(day, zone(tz))


def day_slots(day: date, days: int = 1, tz: str = "Europe/Moscow"):
    return half_hours(midnight(day, tz), midnight(day + timedelta(days=days), tz), zone(tz))


def steady(start: int, end: int, every: int, kwh_per_min: float, first: float = 1000.0) -> list[CounterReading]:
    return [CounterReading(t, first + (t - start) / MIN * kwh_per_min) for t in range(start, end + 1, every)]


# -- the grid ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("tz", "day", "count"), [
    ("Europe/Moscow", date(2026, 3, 29), 48),  # no daylight saving in Russia
    ("Asia/Vladivostok", date(2026, 10, 25), 48),
    ("Europe/Berlin", date(2026, 3, 29), 46),  # 23-hour day
    ("Europe/Berlin", date(2026, 10, 25), 50),  # 25-hour day: two 02:00..03:00
    ("America/New_York", date(2026, 3, 8), 46),
    ("America/New_York", date(2026, 11, 1), 50),
    ("Australia/Lord_Howe", date(2026, 4, 5), 49),  # a 30-minute shift
    ("Asia/Kathmandu", date(2026, 6, 1), 48),  # +05:45
    ("America/Havana", date(2026, 3, 8), 46),  # springs forward at midnight: the day starts at 01:00
])
def test_a_local_day_has_the_half_hours_its_length_gives(tz: str, day: date, count: int) -> None:
    slots = day_slots(day, tz=tz)
    assert len(slots) == count
    assert slots[0].start_ms == midnight(day, tz) and slots[-1].end_ms == midnight(day + timedelta(days=1), tz)
    assert all(a.end_ms == b.start_ms for a, b in itertools.pairwise(slots))
    assert {s.day for s in slots} == {day}
    walls = [datetime.fromtimestamp(s.start_ms / 1000, zone(tz)) for s in slots]
    assert all(w.minute in (0, 30) for w in walls), "every half-hour starts at :00 or :30 local time"


def test_sums_follow_the_local_calendar_and_add_up_the_half_hours() -> None:
    tz = zone("Europe/Berlin")
    start = midnight(date(2026, 10, 24), "Europe/Berlin")
    slots = day_slots(date(2026, 10, 24), days=9, tz="Europe/Berlin")  # into November, over the long day
    readings = steady(start - MIN, slots[-1].end_ms + MIN, MIN, 0.25)
    c = derive(readings, slots, max_gap=max_gap_ms(60), now_ms=FAR_FUTURE)
    days = summed(c.intervals, slots, Size.DAY)
    assert [d.intervals for d in days] == [48, 50] + [48] * 7
    assert [d.energy for d in days] == pytest.approx([d.intervals * 30 * 0.25 for d in days])
    hours = summed(c.intervals, slots, Size.HOUR)
    assert len(hours) == 9 * 24 + 1  # the 25-hour day
    months = summed(c.intervals, slots, Size.MONTH)
    assert [datetime.fromtimestamp(m.start_ms / 1000, tz).isoformat() for m in months] == [
        "2026-10-24T00:00:00+02:00", "2026-11-01T00:00:00+01:00"]
    assert sum(m.energy or 0 for m in months) == pytest.approx(sum(e.energy or 0 for e in c.intervals))
    assert all(m.status is Status.ACTUAL and m.complete for m in months)


# -- counters ---------------------------------------------------------------------------------------

def test_rollover_counts_the_way_through_the_register_maximum() -> None:
    # An MTX meter's register wraps at 1 000 000.00 kWh (energy_domain.md §2.1, CROSS_ZERO_ENT*).
    day = date(2026, 1, 12)
    slots = day_slots(day)[:2]
    t0 = slots[0].start_ms
    readings = [CounterReading(t0, 999_999.0), CounterReading(t0 + 20 * MIN, 999_999.8),
                CounterReading(t0 + 40 * MIN, 0.6), CounterReading(t0 + 60 * MIN, 1.4)]
    c = derive(readings, slots, max_gap=max_gap_ms(20 * 60), now_ms=FAR_FUTURE, modulus=1_000_000.0)
    # Advance 0.8, then 0.2 to the maximum and 0.6 after it, then 0.8: the 00:30 boundary lies
    # half-way between the readings at 00:20 (0.8) and 00:40 (1.6).
    assert [e.energy for e in c.intervals] == pytest.approx([1.2, 1.2])
    assert c.drops == ((t0 + 40 * MIN, Drop.ROLLOVER),)
    assert c.intervals[1].quality & Quality.COUNTER_DECREASE
    # The same drop without a known maximum is a counter that started again: 0.6 since the restart.
    c = derive(readings, slots, max_gap=max_gap_ms(20 * 60), now_ms=FAR_FUTURE, modulus=None)
    assert c.drops[0][1] is Drop.RESET
    assert [e.energy for e in c.intervals] == pytest.approx([1.1, 1.1])


def test_replaced_meter_counts_before_plus_after_and_never_negative() -> None:
    slots = day_slots(date(2026, 1, 12))[:2]
    t0 = slots[0].start_ms
    old = [CounterReading(t0 + i * 5 * MIN, 5000.0 + i * 0.5) for i in range(7)]  # .. 5003.0 at 30 min
    new = [CounterReading(t0 + 35 * MIN + i * 5 * MIN, 0.5 + i * 0.5) for i in range(6)]  # 0.5 .. 3.0 at 60 min
    c = derive(old + new, slots, max_gap=max_gap_ms(300), now_ms=FAR_FUTURE)
    assert c.drops == ((t0 + 35 * MIN, Drop.RESET),)
    assert [e.energy for e in c.intervals] == pytest.approx([3.0, 3.0])
    assert c.intervals[1].quality & Quality.COUNTER_DECREASE and c.intervals[1].status is Status.ACTUAL


def test_a_small_drop_is_noise_counted_once() -> None:
    slots = day_slots(date(2026, 1, 12))[:1]
    t0 = slots[0].start_ms
    values = [1000.0, 1000.5, 1000.4, 1000.45, 1001.0, 1001.5]  # one bad reading 0.1 low, then on
    readings = [CounterReading(t0 + i * 6 * MIN, v) for i, v in enumerate(values)]
    c = derive(readings, slots, max_gap=max_gap_ms(360), now_ms=FAR_FUTURE)
    assert c.intervals[0].energy == pytest.approx(1.5)  # never the 0.1 twice
    assert c.intervals[0].quality & Quality.SUSPECT and c.drops[0][1] is Drop.NOISE


def test_duplicates_and_late_readings_change_nothing() -> None:
    slots = day_slots(date(2026, 1, 12))
    readings = steady(slots[0].start_ms - MIN, slots[-1].end_ms + MIN, 7 * MIN, 0.1)
    once = derive(readings, slots, max_gap=max_gap_ms(420), now_ms=FAR_FUTURE)
    shuffled = readings * 2
    random.Random(1).shuffle(shuffled)
    assert derive(shuffled, slots, max_gap=max_gap_ms(420), now_ms=FAR_FUTURE) == once


# -- gaps -------------------------------------------------------------------------------------------

def test_short_gap_is_interpolated_linearly_and_flagged() -> None:
    slots = day_slots(date(2026, 1, 12))
    t0 = slots[0].start_ms
    readings = [r for r in steady(t0 - MIN, slots[-1].end_ms + MIN, MIN, 0.1)
                if not t0 + 10 * HOUR + 10 * MIN < r.ts_ms < t0 + 11 * HOUR + 20 * MIN]
    c = derive(readings, slots, max_gap=max_gap_ms(60), now_ms=FAR_FUTURE)
    estimated = [(i, e) for i, e in enumerate(c.intervals) if e.status is Status.ESTIMATED]
    assert [i for i, _ in estimated] == [20, 21, 22]  # 10:00 .. 11:30, each touching the gap
    assert all(e.methods == (Method.LINEAR,) and e.quality & Quality.ESTIMATED for _, e in estimated)
    assert sum(e.energy or 0 for e in c.intervals) == pytest.approx(24 * 60 * 0.1)
    assert [(g.intervals, g.method) for g in c.gaps] == [(3, Method.LINEAR)]


def _weeks_with_a_gap(gap_hours: float, history_weeks: int) -> tuple[list, list[CounterReading]]:
    """`history_weeks` weeks of a daily shape (1 kWh per half-hour by night, 3 by day), then a day
    with a gap from 08:10 of `gap_hours`."""
    day = date(2026, 2, 2)
    slots = day_slots(day - timedelta(weeks=history_weeks), days=7 * history_weeks + 1)
    readings, value = [], 100.0
    for s in slots:
        rate = 3.0 if 8 <= s.wall[0] < 20 else 1.0
        for m in range(0, 30, 5):
            readings.append(CounterReading(s.start_ms + m * MIN, value + rate * m / 30))
        value += rate
    readings.append(CounterReading(slots[-1].end_ms, value))
    gap_from = midnight(day) + 8 * HOUR + 10 * MIN
    gap_to = gap_from + int(gap_hours * HOUR)
    return slots, [r for r in readings if not gap_from < r.ts_ms < gap_to]


def test_long_gap_takes_the_shape_of_like_days_and_keeps_the_day_total() -> None:
    slots, readings = _weeks_with_a_gap(6, history_weeks=4)
    c = derive(readings, slots, max_gap=max_gap_ms(300), now_ms=FAR_FUTURE)
    last_day = c.intervals[-48:]
    estimated = [e for e in last_day if e.status is Status.ESTIMATED]
    assert len(estimated) == 13 and all(e.methods == (Method.LIKE_DAY,) for e in estimated)
    # The like days were 3 kWh a half-hour from 08:00 to 20:00, and so is the estimate.
    assert [e.energy for e in estimated] == pytest.approx([3.0] * 13)
    assert sum(e.energy or 0 for e in last_day) == pytest.approx(12 * 2 * 3.0 + 12 * 2 * 1.0)
    assert c.gaps[-1].method is Method.LIKE_DAY


def test_long_gap_without_history_is_spread_over_its_measured_total() -> None:
    slots, readings = _weeks_with_a_gap(6, history_weeks=0)
    c = derive(readings, slots, max_gap=max_gap_ms(300), now_ms=FAR_FUTURE)
    estimated = [e for e in c.intervals if e.status is Status.ESTIMATED]
    assert len(estimated) == 13 and all(e.methods == (Method.LINEAR,) for e in estimated)
    assert sum(e.energy or 0 for e in c.intervals) == pytest.approx(72 + 24)


def test_silent_device_gets_like_day_estimates_or_stays_missing() -> None:
    day = date(2026, 2, 2)
    slots = day_slots(day - timedelta(weeks=1), days=8)
    t0 = slots[0].start_ms
    stop = midnight(day) + 12 * HOUR
    history_to = midnight(day - timedelta(days=6))  # history only for the like day of `day`
    before = steady(t0, history_to, 5 * MIN, 0.05)
    readings = before + steady(midnight(day), stop, 5 * MIN, 0.05, before[-1].value + 1.0)
    c = derive(readings, slots, max_gap=max_gap_ms(300), now_ms=stop + 5 * HOUR)
    after = c.intervals[-24:]  # 12:00 .. 24:00 of `day`: silent
    assert all(e.status is Status.ESTIMATED and e.methods == (Method.LIKE_DAY,) for e in after)
    assert [e.energy for e in after] == pytest.approx([1.5] * 24)
    # The six days between are a gap with readings on both sides: the 1 kWh the counter advanced is
    # spread over them (no like days for them), never dropped, never a made-up number.
    between = c.intervals[48:-48]
    assert all(e.status is Status.ESTIMATED and e.methods == (Method.LINEAR,) for e in between)
    assert sum(e.energy or 0 for e in between) == pytest.approx(1.0)
    # Still reporting (last reading within the gap limit): not a gap, nothing estimated yet.
    c = derive(readings, slots, max_gap=max_gap_ms(300), now_ms=stop + MIN)
    assert c.intervals[-24].status is Status.MISSING and c.intervals[-25].status is Status.ACTUAL


def test_in_progress_and_first_half_hours_are_partial() -> None:
    slots = day_slots(date(2026, 1, 12))[:3]
    t0 = slots[0].start_ms
    readings = steady(t0 + 10 * MIN, t0 + 70 * MIN, MIN, 0.1)
    c = derive(readings, slots, max_gap=max_gap_ms(60), now_ms=t0 + 70 * MIN + 500)
    assert [(e.energy, e.complete) for e in c.intervals] == [
        (pytest.approx(2.0), False), (pytest.approx(3.0), True), (pytest.approx(1.0), False)]


# -- properties -------------------------------------------------------------------------------------

@st.composite
def counter_series(draw: st.DrawFn) -> dict:
    """Readings of a register at a ~5-minute cadence with jitter, some long gaps, resets (a new
    counter from 0) and rollovers at `modulus`; `truth` is the energy consumed up to each reading."""
    tz = draw(st.sampled_from(ZONES))
    day = date(2026, 1, 1) + timedelta(days=draw(st.integers(0, 364)))
    modulus = draw(st.sampled_from([None, 10_000.0, 1_000_000.0]))
    top = modulus or 1e9
    near_top = st.floats(top - 1500.0, top - 1.0)  # wraps within the series
    value = draw(st.one_of(near_top, st.floats(100.0, top - 1.0))) if modulus else draw(st.floats(100.0, 1e6))
    t = midnight(day, tz) - draw(st.integers(0, 3 * HOUR))
    readings, truth, consumed = [CounterReading(t, value)], [0.0], 0.0
    for _ in range(draw(st.integers(2, 300))):
        kind = draw(st.sampled_from(["step"] * 12 + ["gap", "reset", "same"]))
        dt = draw(st.integers(10 * MIN, 12 * HOUR)) if kind == "gap" else draw(st.integers(MIN, 7 * MIN))
        c = 0.0 if kind == "same" else draw(st.floats(0.0, 5.0))
        t += dt
        if kind == "reset" and 100.0 < value < top * (1 - 2 * ROLLOVER_BAND):  # else it reads as a rollover
            value = c  # a new counter, counting from 0 since just after the previous reading
        else:
            value += c
            if modulus and value >= modulus:
                value -= modulus
        consumed += c
        readings.append(CounterReading(t, value))
        truth.append(consumed)
    return {"tz": tz, "modulus": modulus, "readings": readings, "truth": truth}


def _measured(ts: list[int], t: int, gap: int) -> bool:
    j = bisect_right(ts, t)
    if j and ts[j - 1] == t:
        return True
    return 0 < j < len(ts) and ts[j] - ts[j - 1] <= gap


def _truth_at(ts: list[int], truth: list[float], t: int) -> float:
    j = bisect_right(ts, t)
    if ts[j - 1] == t:
        return truth[j - 1]
    return truth[j - 1] + (truth[j] - truth[j - 1]) * (t - ts[j - 1]) / (ts[j] - ts[j - 1])


def whole_days(first: int, last: int, tz):
    return half_hours(local_midnight_ms(local_date(first, tz), tz),
                      local_midnight_ms(local_date(last, tz) + timedelta(days=1), tz), tz)


PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(counter_series())
def test_half_hours_add_up_to_the_counters_advance_and_are_never_negative(series: dict) -> None:
    tz, readings, truth = zone(series["tz"]), series["readings"], series["truth"]
    ts = [r.ts_ms for r in readings]
    gap = max_gap_ms(300)
    slots = whole_days(ts[0], ts[-1], tz)
    c = derive(readings, slots, max_gap=gap, now_ms=FAR_FUTURE, modulus=series["modulus"])
    assert len(c.intervals) == len(slots)
    assert all(e.energy is None or e.energy >= 0 for e in c.intervals)
    for s, e in zip(slots, c.intervals, strict=True):
        if _measured(ts, s.start_ms, gap) and _measured(ts, s.end_ms, gap):
            assert e.status is Status.ACTUAL
        elif ts[0] < s.start_ms and s.end_ms < ts[-1]:
            assert e.status is Status.ESTIMATED, "a gap between two readings is always filled"
    # Between any two measured boundaries (a local day's midnights among them) the half-hours add up
    # to exactly what was consumed: gaps, resets and rollovers included.
    measured = [k for k in range(len(slots) + 1)
                if _measured(ts, (slots[k].start_ms if k < len(slots) else slots[-1].end_ms), gap)]
    for i, j in itertools.pairwise(measured):
        lo = slots[i].start_ms
        hi = slots[j].start_ms if j < len(slots) else slots[-1].end_ms
        got = sum(e.energy or 0.0 for e in c.intervals[i:j])
        want = _truth_at(ts, truth, hi) - _truth_at(ts, truth, lo)
        assert got == pytest.approx(want, rel=1e-7, abs=1e-6)
    days = summed(c.intervals, slots, Size.DAY)
    assert sum(d.energy or 0 for d in days) == pytest.approx(sum(e.energy or 0 for e in c.intervals))
    assert all(d.intervals in (46, 47, 48, 49, 50) for d in days)


@PROPERTY
@given(counter_series(), st.randoms(use_true_random=False))
def test_thinned_duplicated_or_reordered_readings_derive_the_same(series: dict, rnd: random.Random) -> None:
    tz, readings = zone(series["tz"]), series["readings"]
    gap = max_gap_ms(300)
    slots = half_hours(readings[0].ts_ms, readings[-1].ts_ms + 1, tz)
    want = derive(readings, slots, max_gap=gap, now_ms=FAR_FUTURE, modulus=series["modulus"])
    thinned = thin(readings, slots, gap)
    got = derive(thinned, slots, max_gap=gap, now_ms=FAR_FUTURE, modulus=series["modulus"])
    assert [(e.status, e.methods, e.quality) for e in got.intervals] == [
        (e.status, e.methods, e.quality) for e in want.intervals]
    assert [e.energy for e in got.intervals] == pytest.approx([e.energy for e in want.intervals], rel=1e-9, abs=1e-7)
    assert got.gaps == want.gaps
    replayed = readings + rnd.sample(readings, len(readings) // 2)  # redelivered, late and out of order
    rnd.shuffle(replayed)
    assert derive(replayed, slots, max_gap=gap, now_ms=FAR_FUTURE, modulus=series["modulus"]) == want


def test_linear_limit_is_four_half_hours() -> None:
    assert LINEAR_MAX_INTERVALS * HALF_HOUR_MS == 2 * HOUR


def test_a_source_is_asked_only_for_what_it_still_holds() -> None:
    h = HALF_HOUR_MS
    gaps = [Gap(0, 10 * h, 10, Method.LIKE_DAY), Gap(20 * h, 22 * h, 2, Method.LINEAR)]
    assert refillable(gaps, window_ms=15 * h, now_ms=25 * h) == [gaps[1]]
    assert refillable(gaps, window_ms=20 * h, now_ms=25 * h) == [Gap(5 * h, 10 * h, 5, Method.LIKE_DAY), gaps[1]]
    assert refillable(gaps, window_ms=2 * h, now_ms=25 * h) == []
