"""Recommendations from half-hours, checked against numbers worked out by hand."""
from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from meterray.forecasting import recommendations as rec
from meterray.forecasting.features import SLOTS, Series

PRICES = rec.Prices(one_rate=5.0, day=6.0, night=2.0, peak=8.0, semi_peak=5.0)
HOURS = np.arange(SLOTS) / 2


def _days(profile: np.ndarray, days: int = 14, first: date = date(2025, 9, 1)) -> Series:
    return Series(first, np.tile(profile, days))


def test_night_heavy_load_chooses_a_zone_tariff_with_its_saving() -> None:
    # 1 kWh every night half-hour (16 of them), 0.5 kWh every other one (32): 32 kWh a day.
    profile = np.where((HOURS >= 23) | (HOURS < 7), 1.0, 0.5)
    t = rec.tariff_choice(_days(profile, 10), PRICES)
    assert t.days == 10 and t.kwh_total == pytest.approx(320)
    assert t.kwh_by_zone == pytest.approx({"night": 160, "peak": 70, "semi_peak": 90})  # peak 7 h, semi 9 h
    assert t.cost == pytest.approx({"one_rate": 1600, "two_zone": 160 * 6 + 160 * 2,
                                    "three_zone": 70 * 8 + 90 * 5 + 160 * 2})
    assert t.best == "two_zone" and t.saving_vs_one_rate == pytest.approx(1600 - 1280)
    assert t.saving_vs_one_rate_per_year == pytest.approx(320 * 36.5)


def test_peak_heavy_load_stays_on_one_rate() -> None:
    profile = np.where(((HOURS >= 7) & (HOURS < 10)) | ((HOURS >= 17) & (HOURS < 21)), 2.0, 0.1)
    t = rec.tariff_choice(_days(profile), PRICES)
    assert t.best == "one_rate" and t.saving_vs_one_rate == 0


def test_incomplete_days_are_left_out_of_the_tariff_comparison() -> None:
    s = _days(np.ones(SLOTS), 3)
    s.values[5] = np.nan
    assert rec.tariff_choice(s, PRICES).days == 2


def test_peak_shift_candidates_are_the_heaviest_peak_half_hours() -> None:
    profile = np.full(SLOTS, 0.2)
    profile[int(8.5 * 2)] = 3.0  # 08:30, in the morning peak
    profile[int(13 * 2)] = 5.0  # 13:00: heavy, but semi-peak: not a peak candidate
    p = rec.peak_shift(_days(profile), PRICES)
    assert p.candidates[0]["start_hour"] == 8.5 and p.candidates[0]["mean_kwh"] == pytest.approx(3.0)
    peak_kwh = 3.0 + 0.2 * 13  # 14 peak half-hours
    assert p.peak_kwh_per_working_day == pytest.approx(peak_kwh)
    assert p.saving_per_working_day == pytest.approx(0.2 * peak_kwh * (8 - 2))
    assert p.saving_per_year == pytest.approx(p.saving_per_working_day * 247)  # 2025's working days


def test_night_baseload_flagged_when_the_night_stays_on() -> None:
    normal = np.where((HOURS >= 7) & (HOURS < 23), 1.0, 0.1)  # 2 kW by day, 0.2 kW by night
    b = rec.night_baseload(_days(normal, 28), PRICES)
    assert not b.abnormal and b.night_kw == pytest.approx(0.2) and b.day_kw == pytest.approx(2.0)
    left_on = np.tile(normal, 28)
    left_on[21 * SLOTS:] = np.tile(np.where((HOURS >= 7) & (HOURS < 23), 1.0, 0.6), 7)  # last week: 1.2 kW nights
    b = rec.night_baseload(Series(date(2025, 9, 1), left_on), PRICES)
    assert b.abnormal and b.last_week_kw == pytest.approx(1.2) and b.weeks_before_kw == pytest.approx(0.2)
    assert any("rose" in r for r in b.reasons)


def test_anomalies_are_the_half_hours_far_outside_the_interval() -> None:
    # Interval [0.8, 1.2] around 1: a miss counts beyond one more width (0.4): above 1.6 or below 0.4.
    actual = np.array([1.0, 5.0, 0.1, np.nan, 1.3, 1.7, 0.5])
    found = rec.anomalies(actual, np.ones(7), np.full(7, 0.8), np.full(7, 1.2), offset=10)
    assert [(a.index, a.actual) for a in found] == [(11, 5.0), (12, 0.1), (15, 1.7)]
