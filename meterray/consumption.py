"""Half-hour interval energy from a cumulative energy register (e.g. 1-0:1.8.0, A+ import).

Pure: counter readings (ts, value, quality flags) and the device's local half-hour grid
(meterray.intervals) in, interval energies with quality, status and estimation method out. No Ray,
no I/O; the register's wrap value is passed in (it belongs to the meter profile).

How (energy_domain.md §3):
- The register is turned into a never-decreasing *advance* A(t): each step between two readings
  adds the register's increase; a drop is classified as a **rollover** (the register wrapped at
  its maximum: the advance is what was left to the maximum plus the new value) or a **reset /
  replacement** (a large drop: the new counter started again from 0, the advance is the new value),
  and a small drop is **noise** (advance 0, the old high is kept so nothing is counted twice).
  So no interval is ever negative.
- The counter value at each half-hour boundary is interpolated linearly between the readings
  around it, so the intervals between any two boundaries add up exactly to the advance between
  them (telescoping): the intervals of a day add up to the counter's advance over that day.
- A **gap** is a stretch between two readings longer than the expected cadence allows
  (`max_gap_ms`). Half-hours touching one are estimated, never left as measured: a run of at most
  LINEAR_MAX_INTERVALS by linear interpolation of the counter across it; a longer one by the
  like-day average (same local half-hour, same weekday, the previous LIKE_DAY_WEEKS weeks, measured
  intervals only), scaled so the run still adds up to the counter's advance across it. Where the
  readings on both sides are known but like-day history is not, the run is spread linearly (the
  total is measured, only its shape is estimated). After the last reading (a device gone silent)
  only like-day history can estimate; with none the half-hour stays missing: no made-up number.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum

from meterray.domain import Quality
from meterray.intervals import HALF_HOUR_MS, Size, Slot, bucket_key

# Runs of up to 4 half-hours (2 h) are interpolated linearly; longer ones use like-day history.
# Itron's linear-interpolation rule is bounded by a configurable maximum (their example: 3 h);
# utility training material uses point-to-point up to 1 h and history beyond (energy_domain.md §3).
LINEAR_MAX_INTERVALS = 4
# Like-day: the same half-hour of the same weekday over the previous 4 weeks, where measured
# (Itron uses the 3 nearest like days, training material the previous 3 weeks: §3).
LIKE_DAY_WEEKS = 4
# A device counts as reporting until max(3 × its cadence, 10 min) without a reading (the offline
# rule of energy_domain.md §2.2); a longer stretch between two readings is a gap.
GAP_CADENCES = 3
MIN_GAP_MS = 10 * 60 * 1000
# A drop is a rollover when the register was within 1 % of its wrap value and the advance through
# the wrap is under 1 % of the register's range (MTX meters wrap at 1 000 000.00 kWh: §2.1).
ROLLOVER_BAND = 0.01
# A drop to at most a tenth of the previous high is a counter that started again (replacement or
# reset); a smaller drop is noise or a bad reading, counted as no advance.
RESET_FRACTION = 0.1


def max_gap_ms(cadence_s: float) -> int:
    return max(int(GAP_CADENCES * cadence_s * 1000), MIN_GAP_MS)


class Status(StrEnum):
    """A = actual, E = estimated, M = missing (the MDM quality codes of energy_domain.md §3)."""

    ACTUAL = "actual"
    ESTIMATED = "estimated"
    MISSING = "missing"
    PARTIAL = "partial"  # only for sums: some half-hours missing, the others added up


class Method(StrEnum):
    LINEAR = "linear"
    LIKE_DAY = "like_day"


class Drop(StrEnum):
    ROLLOVER = "rollover"
    RESET = "reset"
    NOISE = "noise"


@dataclass(frozen=True, slots=True)
class CounterReading:
    """A register reading. `after_gap`: whether the stretch before it held a gap; None lets the
    derivation decide from the spacing (storage's thinned reads decide it over every reading)."""

    ts_ms: int
    value: float
    quality: int = 0
    after_gap: bool | None = None


@dataclass(frozen=True, slots=True)
class IntervalEnergy:
    start_ms: int
    end_ms: int
    energy: float | None  # kWh (the register's unit); None when missing
    status: Status
    methods: tuple[Method, ...]  # how it was estimated; () when measured or missing
    quality: int  # Quality bits of the readings that made it, plus COUNTER_DECREASE/SUSPECT/ESTIMATED
    complete: bool  # False: the readings start or end inside it (energy covers only part of it)
    intervals: int = 1  # half-hours summed (sums only)


@dataclass(frozen=True, slots=True)
class Gap:
    """A run of half-hours without measured energy: what a source that keeps an archive could resend."""

    start_ms: int
    end_ms: int
    intervals: int
    method: Method | None  # how it was filled; None: left missing


@dataclass(frozen=True, slots=True)
class Consumption:
    intervals: tuple[IntervalEnergy, ...]
    gaps: tuple[Gap, ...]
    drops: tuple[tuple[int, Drop], ...]  # (ts_ms of the reading after the drop, kind)


class _Advance:
    """The never-decreasing advance A at each reading, and what each step between readings was."""

    def __init__(self, readings: Sequence[CounterReading], modulus: float | None, gap_ms: int) -> None:
        by_ts = {r.ts_ms: r for r in readings}  # one reading per instant (the archive keys them so)
        rs = [by_ts[t] for t in sorted(by_ts)]
        self.ts = [r.ts_ms for r in rs]
        self.adv: list[float] = []
        self.gap: list[bool] = []  # step i: from reading i-1 to reading i
        self.flags: list[int] = []
        self.drops: list[tuple[int, Drop]] = []
        total, high, prev = 0.0, 0.0, 0.0
        for i, r in enumerate(rs):
            flags = r.quality
            if i == 0:
                high = prev = r.value
                self.gap.append(False)
            else:
                step, high, drop = _step(prev, high, r.value, modulus)
                total += step
                prev = r.value
                if drop is not None:
                    self.drops.append((r.ts_ms, drop))
                    flags |= Quality.COUNTER_DECREASE | (Quality.SUSPECT if drop is Drop.NOISE else 0)
                gap = r.after_gap if r.after_gap is not None else r.ts_ms - self.ts[i - 1] > gap_ms
                self.gap.append(gap)
            self.adv.append(total)
            self.flags.append(flags)

    def __len__(self) -> int:
        return len(self.ts)

    def at(self, t: int) -> tuple[float | None, str]:
        """A(t) and where t lies: 'measured', 'gap' (between two readings too far apart), 'before'
        or 'after' the readings."""
        ts = self.ts
        j = bisect_right(ts, t)
        if j and ts[j - 1] == t:
            return self.adv[j - 1], "measured"
        if j == 0:
            return None, "before"
        if j == len(ts):
            return None, "after"
        a0, a1, t0, t1 = self.adv[j - 1], self.adv[j], ts[j - 1], ts[j]
        value = a0 + (a1 - a0) * ((t - t0) / (t1 - t0))
        return value, "gap" if self.gap[j] else "measured"

    def flags_over(self, start: int, end: int) -> int:
        """Quality of the steps that overlap (start, end), carried by the reading each step ends at."""
        out = 0
        ts = self.ts
        for i in range(max(bisect_right(ts, start), 1), min(bisect_left(ts, end), len(ts) - 1) + 1):
            out |= self.flags[i]
        return out


def _step(prev: float, high: float, value: float, modulus: float | None) -> tuple[float, float, Drop | None]:
    """(advance, new high, drop kind) for one reading after another."""
    if value >= prev:
        return max(0.0, value - high), max(high, value), None
    if modulus is not None and high <= modulus and (modulus - high) + value <= ROLLOVER_BAND * modulus:
        return (modulus - high) + value, value, Drop.ROLLOVER
    if value <= RESET_FRACTION * high:
        return value, value, Drop.RESET  # the new counter counted from 0: before plus after, never negative
    return 0.0, high, Drop.NOISE


def derive(
    readings: Iterable[CounterReading],
    slots: Sequence[Slot],
    *,
    max_gap: int,
    now_ms: int,
    modulus: float | None = None,
) -> Consumption:
    """Energy of each half-hour of `slots` (contiguous, in order) from the register readings.

    `max_gap`: the longest stretch between readings that is not a gap (see `max_gap_ms`);
    `now_ms`: a device whose last reading is within `max_gap` of now is still reporting, so the
    half-hours after it are not a gap yet (missing, not estimated); `modulus`: the value at which the
    register wraps to 0 (None: it does not wrap within its life)."""
    adv = _Advance(list(readings), modulus, max_gap)
    n = len(slots)
    if not len(adv):
        return Consumption(tuple(_missing(s, 0) for s in slots), (), ())
    first, last = adv.ts[0], adv.ts[-1]
    live = now_ms - last <= max_gap
    bounds = [adv.at(s.start_ms) for s in slots] + [adv.at(slots[-1].end_ms)] if n else []
    out: list[IntervalEnergy | None] = []
    tail: list[bool] = []  # for the slots left to estimate: after the last reading (True) or between readings
    for k, s in enumerate(slots):
        (a0, w0), (a1, w1) = bounds[k], bounds[k + 1]
        q = adv.flags_over(s.start_ms, s.end_ms)
        tail.append(s.start_ms >= last)
        if w0 == w1 == "measured":
            assert a0 is not None and a1 is not None
            out.append(IntervalEnergy(s.start_ms, s.end_ms, a1 - a0, Status.ACTUAL, (), q, True))
        elif s.end_ms <= first or (live and s.start_ms >= last):
            out.append(_missing(s, q))  # before the first reading, or not reported yet
        elif s.start_ms >= last:
            out.append(None)  # silent since: like-day history or nothing
        elif w0 == "before" or w1 == "after":  # the readings start or end inside it: energy of that part
            lo = 0.0 if w0 == "before" else a0
            hi = adv.adv[-1] if w1 == "after" else a1
            assert lo is not None and hi is not None
            if "gap" in (w0, w1):
                out.append(IntervalEnergy(s.start_ms, s.end_ms, hi - lo, Status.ESTIMATED, (Method.LINEAR,),
                                          int(q | Quality.ESTIMATED), False))
            else:
                out.append(IntervalEnergy(s.start_ms, s.end_ms, hi - lo, Status.ACTUAL, (), q, False))
        else:
            out.append(None)  # touches a gap between two readings: estimated below
    history = {(s.day, s.wall): e.energy for s, e in zip(slots, out, strict=True)
               if e is not None and e.status is Status.ACTUAL and e.complete and e.energy is not None}
    gaps: list[Gap] = []
    k = 0
    while k < n:
        if out[k] is not None:
            k += 1
            continue
        end = k
        while end < n and out[end] is None and tail[end] == tail[k]:
            end += 1
        run = range(k, end)
        method = _fill(out, slots, run, None if tail[k] else (bounds[k][0], bounds[end][0]), adv, history)
        gaps.append(Gap(slots[k].start_ms, slots[end - 1].end_ms, len(run), method))
        k = end
    return Consumption(tuple(e for e in out if e is not None), tuple(gaps), tuple(adv.drops))


def _missing(s: Slot, quality: int) -> IntervalEnergy:
    return IntervalEnergy(s.start_ms, s.end_ms, None, Status.MISSING, (), quality, False)


def _fill(out: list[IntervalEnergy | None], slots: Sequence[Slot], run: range,
          ends: tuple[float | None, float | None] | None, adv: _Advance,
          history: dict[tuple[date, tuple[int, int, int]], float]) -> Method | None:
    """Estimate the half-hours of `run` in place; returns the method used (None: left missing).
    `ends`: the counter's advance at the run's two ends when readings lie on both sides, else None."""
    like = [_like_day(slots[k], history) for k in run]
    if ends is not None:  # readings on both sides: the run's total is measured
        a_left, a_right = ends
        assert a_left is not None and a_right is not None
        total = a_right - a_left
        weights = [w for w in like if w is not None]
        if len(run) > LINEAR_MAX_INTERVALS and len(weights) == len(run) and sum(weights) > 0:
            scale = total / sum(weights)
            for k, weight in zip(run, weights, strict=True):
                out[k] = _estimate(slots[k], weight * scale, Method.LIKE_DAY, adv)
            return Method.LIKE_DAY
        for k in run:  # the counter interpolated across the gap
            lo, hi = adv.at(slots[k].start_ms)[0], adv.at(slots[k].end_ms)[0]
            assert lo is not None and hi is not None
            out[k] = _estimate(slots[k], hi - lo, Method.LINEAR, adv)
        return Method.LINEAR
    used: Method | None = None
    for k, w in zip(run, like, strict=True):
        if w is None:
            out[k] = _missing(slots[k], adv.flags_over(slots[k].start_ms, slots[k].end_ms))
        else:
            out[k] = _estimate(slots[k], w, Method.LIKE_DAY, adv)
            used = Method.LIKE_DAY
    return used


def _estimate(s: Slot, energy: float, method: Method, adv: _Advance) -> IntervalEnergy:
    q = adv.flags_over(s.start_ms, s.end_ms) | Quality.ESTIMATED
    return IntervalEnergy(s.start_ms, s.end_ms, energy, Status.ESTIMATED, (method,), int(q), True)


def _like_day(s: Slot, history: dict[tuple[date, tuple[int, int, int]], float]) -> float | None:
    found = [history[key] for w in range(1, LIKE_DAY_WEEKS + 1)
             if (key := (s.day - timedelta(weeks=w), s.wall)) in history]
    return sum(found) / len(found) if found else None


def refillable(gaps: Iterable[Gap], window_ms: int, now_ms: int) -> list[Gap]:
    """The parts of `gaps` a source that keeps `window_ms` of history can still resend: those ending
    after now - window, cut to that window (a source cannot send what it no longer holds)."""
    since = now_ms - window_ms
    return [g if g.start_ms >= since else Gap(since, g.end_ms, -(-(g.end_ms - since) // HALF_HOUR_MS), g.method)
            for g in gaps if g.end_ms > since]


def thin(readings: Sequence[CounterReading], slots: Sequence[Slot], max_gap: int) -> list[CounterReading]:
    """The readings that decide anything, as storage's archive query keeps them: the first and last
    of each half-hour, both sides of every drop and of every gap, and every flagged reading; each
    kept one says whether a gap preceded it. Between two kept readings the register only rose, so
    the derivation gives the same result from these as from all (a property test checks it)."""
    rs = sorted({r.ts_ms: r for r in readings}.values(), key=lambda r: r.ts_ms)
    starts = [s.start_ms for s in slots]
    bucket = [bisect_right(starts, r.ts_ms) for r in rs]  # as PostgreSQL's width_bucket
    kept = []
    for i, r in enumerate(rs):
        p = rs[i - 1] if i else None
        nx = rs[i + 1] if i + 1 < len(rs) else None
        gap_before = p is not None and r.ts_ms - p.ts_ms > max_gap
        keep = (p is None or nx is None or bucket[i - 1] != bucket[i] or bucket[i + 1] != bucket[i]
                or r.quality != 0 or r.value < p.value or nx.value < r.value
                or gap_before or nx.ts_ms - r.ts_ms > max_gap)
        if keep:
            kept.append(CounterReading(r.ts_ms, r.value, r.quality, gap_before))
    return kept


def summed(intervals: Sequence[IntervalEnergy], slots: Sequence[Slot], size: Size) -> list[IntervalEnergy]:
    """Half-hours (one per slot, in order) added up into hours, local days or local months."""
    if size is Size.HALF_HOUR:
        return list(intervals)
    groups: dict[tuple[int, ...], list[IntervalEnergy]] = {}
    for s, e in zip(slots, intervals, strict=True):
        groups.setdefault(bucket_key(s, size), []).append(e)
    out = []
    for members in groups.values():
        known = [e for e in members if e.energy is not None]
        statuses = {e.status for e in members}
        if not known:
            status = Status.MISSING
        elif Status.MISSING in statuses:
            status = Status.PARTIAL
        elif Status.ESTIMATED in statuses:
            status = Status.ESTIMATED
        else:
            status = Status.ACTUAL
        methods = tuple(sorted({m for e in members for m in e.methods}))
        quality = 0
        for e in members:
            quality |= e.quality
        out.append(IntervalEnergy(
            members[0].start_ms, members[-1].end_ms, sum(e.energy for e in known if e.energy is not None)
            if known else None, status, methods, quality, all(e.complete for e in members), len(members)))
    return out
