"""Features for a day-ahead forecast of half-hourly load, issued at local midnight.

A forecast for local day d (48 half-hours) is made at d's midnight, so everything in its features is
known then: values of day d-1 and earlier only (every value lag is >= 48 half-hours), the calendar,
known-in-advance columns (e.g. a working-day flag) and temperature *as observed* for day d. Using the
observed temperature is the usual ex-post convention of load-forecasting studies (e.g. GEFCom2012,
Hong et al. 2014): it measures the model, not the weather forecast; an operational run would feed a
weather forecast in its place, and the errors would grow by the weather forecast's error.

Every value feature is divided by the series' recent level (the mean of the 7 days before d), and the
model predicts the target divided by the same level: one model fits meters of any size (a global
model), and a level shift (season, a new tenant) does not leave the trees' range.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import numpy.typing as npt

from meterray.forecasting.calendar import Day, day_kind

SLOTS = 48  # half-hours per local day (a Moscow-time day has no DST shifts)
LEVEL_DAYS = 7
SAME_SLOT_LAGS = (1, 2, 3, 4, 5, 6, 7, 14, 21, 28)  # days back, same half-hour
# Heating / cooling degree thresholds (°C): 15.5 °C is the usual UK/EU heating base (Eurostat HDD uses
# 15 °C, CIBSE TM41 15.5 °C); 22 °C a common cooling base. Trees find their own knots; these help little data.
HEATING_BASE_C = 15.5
COOLING_BASE_C = 22.0

Array = npt.NDArray[np.float64]
Rows = npt.NDArray[np.intp]  # row indices
Calendar = Callable[[date], Day]


@dataclass(frozen=True)
class Series:
    """One half-hourly series on whole local days: values[i] is half-hour i % 48 of day first + i // 48.

    NaN marks a missing value. `temperature` (°C) and `extras` (known-in-advance numeric columns) have the
    same length."""

    first: date
    values: Array
    temperature: Array | None = None
    extras: tuple[tuple[str, Array], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.values.ndim != 1 or len(self.values) % SLOTS:
            raise ValueError(f"a series holds whole days of {SLOTS} half-hours, got {self.values.shape}")
        for name, col in (("temperature", self.temperature), *self.extras):
            if col is not None and col.shape != self.values.shape:
                raise ValueError(f"column {name!r} has {col.shape}, values {self.values.shape}")

    @property
    def days(self) -> int:
        return len(self.values) // SLOTS

    def day(self, d: int) -> date:
        return self.first + timedelta(days=d)

    def upto(self, days: int) -> Series:
        """The first `days` days (what is known at the midnight starting day `days`, plus its exogenous columns)."""
        n = days * SLOTS
        return Series(self.first, self.values[:n],
                      None if self.temperature is None else self.temperature[:n],
                      tuple((k, v[:n]) for k, v in self.extras))


@dataclass(frozen=True)
class Features:
    names: tuple[str, ...]
    x: npt.NDArray[np.float32]  # (days * 48, features)
    level: Array  # (days * 48,): the divisor of the target and value features; NaN: no level yet
    target: Array  # (days * 48,): value / level (NaN where unknown)


def _shift(a: Array, k: int) -> Array:
    """Rows k steps later see row i - k (first k rows NaN)."""
    out = np.full_like(a, np.nan)
    if k < len(a):
        out[k:] = a[:len(a) - k]
    return out


def _nanmean(stack: Sequence[Array]) -> Array:
    s = np.stack(stack)
    n = np.sum(~np.isnan(s), axis=0)
    total = np.nansum(s, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _trailing_mean(flat: Array, window: int, end_lag: int) -> Array:
    """Mean of flat[t - end_lag - window + 1 .. t - end_lag] (NaNs skipped; NaN if over half missing)."""
    ok = ~np.isnan(flat)
    cs = np.concatenate(([0.0], np.cumsum(np.where(ok, flat, 0.0))))
    cn = np.concatenate(([0], np.cumsum(ok)))
    n = len(flat)
    hi = np.arange(n) - end_lag + 1  # exclusive end index into cs
    lo = hi - window
    valid = lo >= 0
    hi_c, lo_c = np.clip(hi, 0, n), np.clip(lo, 0, n)
    cnt = cn[hi_c] - cn[lo_c]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (cs[hi_c] - cs[lo_c]) / cnt
    return np.where(valid & (cnt * 2 > window), mean, np.nan)


def build(series: Series, calendar: Calendar = day_kind) -> Features:
    """Features of every half-hour of the series, each using only what was known at its day's midnight."""
    n_days = series.days
    v = series.values.astype(np.float64).reshape(n_days, SLOTS)
    daily = _nanmean(list(v.T))  # (days,) mean of each day
    daily = np.where(np.sum(~np.isnan(v), axis=1) >= SLOTS // 2, daily, np.nan)
    level_d = _nanmean([_shift(daily, k) for k in range(1, LEVEL_DAYS + 1)])
    level_d = np.where(np.isnan(level_d), _shift(daily, 1), level_d)
    level_d = np.where(level_d > 0, level_d, np.nan)
    kinds = np.array([int(calendar(series.day(d))) for d in range(n_days)], dtype=np.float64)
    off = np.isin(kinds, (Day.WEEKEND, Day.HOLIDAY, Day.BRIDGE)).astype(np.float64)
    dow = np.array([series.day(d).weekday() for d in range(n_days)], dtype=np.float64)

    cols: dict[str, Array] = {}

    def per_day(a: Array) -> Array:  # a (days,) -> (days * 48,)
        return np.repeat(a, SLOTS)

    def by_slot(m: Array) -> Array:  # m (days, 48) -> (days * 48,)
        return m.reshape(-1)

    lvl = per_day(level_d)
    for k in SAME_SLOT_LAGS:
        cols[f"lag_d{k}"] = by_slot(_shift(v, k)) / lvl
    cols["mean_d1_7"] = by_slot(_nanmean([_shift(v, k) for k in range(1, 8)])) / lvl
    cols["mean_w1_4"] = by_slot(_nanmean([_shift(v, k) for k in (7, 14, 21, 28)])) / lvl
    # The same half-hour on the most recent days of the same kind (working / day off): after a
    # weekend a Monday looks like Friday, a holiday like the last Sunday.
    same_kind_1, same_kind_3 = _same_kind(v, off)
    cols["same_kind_last"] = by_slot(same_kind_1) / lvl
    cols["same_kind_mean3"] = by_slot(same_kind_3) / lvl
    flat = series.values.astype(np.float64)
    cols["roll6_lag48"] = _trailing_mean(flat, 6, SLOTS) / lvl
    cols["roll48_lag48"] = _trailing_mean(flat, SLOTS, SLOTS) / lvl
    cols["roll336_lag48"] = _trailing_mean(flat, 7 * SLOTS, SLOTS) / lvl
    # Recent level: how the last known day and the last known half-hours stand against the week.
    cols["prev_day_mean"] = per_day(_shift(daily, 1) / level_d)
    cols["prev_day_vs_week_before"] = per_day(_shift(daily, 1) / _shift(daily, 8))
    last = _shift(v[:, -1], 1)
    cols["last_value"] = per_day(last / level_d)
    cols["last_2h_mean"] = per_day(_shift(_nanmean(list(v[:, -4:].T)), 1) / level_d)
    # Calendar.
    cols["slot"] = np.tile(np.arange(SLOTS, dtype=np.float64), n_days)
    cols["dow"] = per_day(dow)
    cols["day_kind"] = per_day(kinds)
    cols["day_off"] = per_day(off)
    cols["prev_day_off"] = per_day(_shift(off, 1))
    nxt = np.full_like(off, np.nan)
    nxt[:-1] = off[1:]
    if n_days:  # the next day's calendar is known in advance, even past the series' end
        nxt[-1] = float(calendar(series.day(n_days)) in (Day.WEEKEND, Day.HOLIDAY, Day.BRIDGE))
    cols["next_day_off"] = per_day(nxt)
    if series.temperature is not None:
        t = series.temperature.astype(np.float64)
        td = t.reshape(n_days, SLOTS)
        t_mean = _nanmean(list(td.T))
        cols["temp"] = t
        cols["temp_lag48"] = _shift(t, SLOTS)
        cols["temp_change_48"] = t - cols["temp_lag48"]
        cols["temp_day_mean"] = per_day(t_mean)
        cols["temp_prev_day_mean"] = per_day(_shift(t_mean, 1))
        cols["heating_degrees"] = per_day(np.maximum(0.0, HEATING_BASE_C - t_mean))
        cols["cooling_degrees"] = per_day(np.maximum(0.0, t_mean - COOLING_BASE_C))
    for name, col in series.extras:
        cols[f"x_{name}"] = col.astype(np.float64)
    names = tuple(cols)
    x = np.column_stack([cols[k] for k in names]).astype(np.float32)
    return Features(names, x, lvl, flat / lvl)


def _same_kind(v: Array, off: Array) -> tuple[Array, Array]:
    """Per day d: the same-slot values of the last day before d of d's kind, and the mean of the last three."""
    n_days = len(off)
    last = np.full_like(v, np.nan)
    mean3 = np.full_like(v, np.nan)
    seen: dict[float, list[int]] = {0.0: [], 1.0: []}
    for d in range(n_days):
        prior = seen[off[d]]
        if prior:
            last[d] = v[prior[-1]]
            mean3[d] = _nanmean(list(v[prior[-3:]]))
        seen[off[d]].append(d)
    return last, mean3
