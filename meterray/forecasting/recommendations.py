"""Recommendations from a meter's (or an organisation's) own half-hours: the cheapest tariff, load to
shift out of the peak, a night baseload that should not be there, and half-hours the forecast did not
expect. Pure: a Series and prices in, numbers out; every recommendation carries the numbers behind it.

Zones of day (local time) are those for households and equivalent consumers, the same all year: night
23-7, peak 7-10 and 17-21, semi-peak the rest (10-17, 21-23); the day zone of a two-zone tariff is peak
plus semi-peak (7-23). Source: ФСТ России, приказ от 26.11.2013 № 1473-э «Об утверждении интервалов
тарифных зон суток для населения и приравненных к нему категорий потребителей». Business consumers'
peak hours differ by power system and month (ФАС orders per year): pass other zones for them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import numpy.typing as npt

from meterray.forecasting.calendar import non_working
from meterray.forecasting.features import SLOTS, Array, Series

NIGHT_HOURS = (23, 7)  # [23:00, 07:00)
PEAK_HOURS = ((7, 10), (17, 21))
# A night baseload above this share of the working-day daytime mean is worth a look (equipment left on);
# and a rise of the last week's night baseload above the weeks before by this factor.
BASELOAD_SHARE_FLAG = 0.5
BASELOAD_RISE_FLAG = 1.2
SHIFT_SHARE = 0.2  # what-if: a fifth of the peak energy moved to the night


def _slot_hours() -> Array:
    return np.arange(SLOTS) / 2


Mask = npt.NDArray[np.bool_]


def zones() -> tuple[Mask, Mask, Mask]:
    """Boolean masks over the 48 half-hours of a day: night, peak, semi-peak."""
    h = _slot_hours()
    night = (h >= NIGHT_HOURS[0]) | (h < NIGHT_HOURS[1])
    peak = np.zeros(SLOTS, dtype=bool)
    for a, b in PEAK_HOURS:
        peak |= (h >= a) & (h < b)
    return night, peak, ~night & ~peak


@dataclass(frozen=True)  # no slots: the defaults stay readable as class attributes (the API's defaults)
class Prices:
    """Per kWh, in the caller's currency. The defaults are examples of the usual ratios, not a region's tariff."""

    one_rate: float = 6.00
    day: float = 6.90
    night: float = 2.80
    peak: float = 7.60
    semi_peak: float = 6.00


@dataclass(frozen=True)
class TariffChoice:
    days: int  # days with data
    kwh_total: float
    kwh_by_zone: dict[str, float]  # night, peak, semi_peak
    cost: dict[str, float]  # one_rate, two_zone, three_zone
    best: str
    saving_vs_one_rate: float
    saving_vs_one_rate_per_year: float


def tariff_choice(series: Series, prices: Prices) -> TariffChoice:
    v = series.values.reshape(series.days, SLOTS)
    full = ~np.isnan(v).any(axis=1)  # only complete days: a partial day would bias the zone shares
    v = v[full]
    night, peak, semi = zones()
    kwh = {"night": float(v[:, night].sum()), "peak": float(v[:, peak].sum()), "semi_peak": float(v[:, semi].sum())}
    total = sum(kwh.values())
    cost = {"one_rate": total * prices.one_rate,
            "two_zone": (kwh["peak"] + kwh["semi_peak"]) * prices.day + kwh["night"] * prices.night,
            "three_zone": kwh["peak"] * prices.peak + kwh["semi_peak"] * prices.semi_peak + kwh["night"] * prices.night}
    best = min(cost, key=lambda k: cost[k])
    saving = cost["one_rate"] - cost[best]
    days = int(full.sum())
    return TariffChoice(days, total, kwh, cost, best, saving, saving * 365 / days if days else 0.0)


@dataclass(frozen=True)
class PeakShift:
    candidates: list[dict[str, float]]  # the heaviest peak half-hours: hour, mean kWh on working days
    peak_kwh_per_working_day: float
    shifted_kwh_per_working_day: float  # SHIFT_SHARE of the peak energy
    saving_per_working_day: float  # at (peak - night) price, three-zone
    saving_per_year: float  # over the working days of the series' last calendar year (production calendar)


def working_days(year: int) -> int:
    first = date(year, 1, 1)
    return sum(not non_working(first + timedelta(days=i)) for i in range((date(year + 1, 1, 1) - first).days))


def peak_shift(series: Series, prices: Prices, top: int = 3) -> PeakShift:
    v = series.values.reshape(series.days, SLOTS)
    working = np.array([not non_working(series.day(d)) for d in range(series.days)])
    w = v[working & ~np.isnan(v).any(axis=1)]
    _, peak, _ = zones()
    if not len(w):
        return PeakShift([], 0.0, 0.0, 0.0, 0.0)
    mean = w.mean(axis=0)
    order = [i for i in np.argsort(-mean) if peak[i]][:top]
    peak_kwh = float(mean[peak].sum())
    shifted = SHIFT_SHARE * peak_kwh
    saving = shifted * (prices.peak - prices.night)
    return PeakShift([{"start_hour": float(i / 2), "mean_kwh": float(mean[i]),
                       "share_of_peak": float(mean[i] / peak_kwh) if peak_kwh else 0.0} for i in order],
                     peak_kwh, shifted, saving, saving * working_days(series.day(series.days - 1).year))


@dataclass(frozen=True)
class Baseload:
    night_kw: float  # median power 01:00-05:00 over the period (the quietest hours)
    day_kw: float  # mean power 07:00-23:00 on working days
    share: float  # night / day
    last_week_kw: float
    weeks_before_kw: float
    abnormal: bool
    reasons: list[str] = field(default_factory=list)
    excess_kwh_per_year: float = 0.0  # above BASELOAD_SHARE_FLAG × day, every night hour of a year
    excess_cost_per_year: float = 0.0


def night_baseload(series: Series, prices: Prices) -> Baseload:
    v = series.values.reshape(series.days, SLOTS) * 2  # kWh per half-hour -> mean kW
    h = _slot_hours()
    quiet = (h >= 1) & (h < 5)
    daytime = (h >= 7) & (h < 23)
    working = np.array([not non_working(series.day(d)) for d in range(series.days)])
    night_kw = float(np.nanmedian(v[:, quiet])) if np.isfinite(v[:, quiet]).any() else float("nan")
    day_kw = float(np.nanmean(v[working][:, daytime])) if np.isfinite(v[working][:, daytime]).any() else float("nan")
    last = v[-7:, quiet]
    before = v[:-7, quiet]
    last_kw = float(np.nanmedian(last)) if np.isfinite(last).any() else float("nan")
    before_kw = float(np.nanmedian(before)) if np.isfinite(before).any() else float("nan")
    share = night_kw / day_kw if day_kw > 0 else float("nan")
    reasons = []
    if share > BASELOAD_SHARE_FLAG:
        reasons.append(f"night baseload {night_kw:.2f} kW is {share:.0%} of the working-day daytime mean "
                       f"{day_kw:.2f} kW (flag above {BASELOAD_SHARE_FLAG:.0%})")
    if before_kw > 0 and last_kw > BASELOAD_RISE_FLAG * before_kw:
        reasons.append(f"night baseload rose from {before_kw:.2f} kW to {last_kw:.2f} kW in the last week")
    excess_kw = max(0.0, night_kw - BASELOAD_SHARE_FLAG * day_kw) if np.isfinite(share) else 0.0
    excess_kwh = excess_kw * 8 * 365  # the 8 night-zone hours of every day
    return Baseload(night_kw, day_kw, share, last_kw, before_kw, bool(reasons), reasons, excess_kwh,
                    excess_kwh * prices.night)


@dataclass(frozen=True, slots=True)
class Anomaly:
    index: int  # half-hour index into the series
    actual: float
    forecast: float
    lower: float
    upper: float


def anomalies(actual: Array, point: Array, lower: Array, upper: Array, offset: int = 0) -> list[Anomaly]:
    """Half-hours whose measured energy lies outside the forecast's prediction interval by more than the
    interval's own width (at least a tenth of the forecast): an 80 % interval misses one half-hour in
    five by design, so only a miss that far is worth a look."""
    out = []
    for i, (a, p, lo, hi) in enumerate(zip(actual, point, lower, upper, strict=True)):
        if not (np.isfinite(a) and np.isfinite(lo) and np.isfinite(hi)):
            continue
        margin = max(hi - lo, 0.1 * abs(p) if np.isfinite(p) else 0.0)
        if a > hi + margin or a < lo - margin:
            out.append(Anomaly(offset + i, float(a), float(p), float(lo), float(hi)))
    return out
