"""The day-ahead backtest: its JSON, that the model beats the naive forecasts on a series with known
structure, and that a forecast uses nothing after its midnight."""
from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from meterray.forecasting import backtest
from meterray.forecasting.features import SLOTS, Series, build
from tests.meterray.forecasting.synthetic import load


def test_json_has_exactly_the_documented_shape() -> None:
    r = backtest.run(load(42), test_days=5)
    out = r.as_json()
    assert set(out) == {"horizon", "test_days", "model", "seasonal_naive_daily", "seasonal_naive_weekly"}
    assert out["horizon"] == 48 and out["test_days"] == 5
    for k in ("model", "seasonal_naive_daily", "seasonal_naive_weekly"):
        assert set(out[k]) == {"mase", "mape", "mae"}  # type: ignore[arg-type]
        assert all(np.isfinite(v) and v >= 0 for v in out[k].values())  # type: ignore[attr-defined]
    assert r.points == 5 * SLOTS and r.fallback_days == 0


def test_model_beats_both_naive_forecasts_on_known_structure() -> None:
    # 9 weeks from 1 Sep 2025: the test set (last 14 days) holds the 3-4 Nov 2025 bridge and holiday.
    r = backtest.run(load(63, temperature=True), test_days=14)
    assert r.model.mase < 0.8 * r.seasonal_naive_weekly.mase, r
    assert r.model.mase < 0.6 * r.seasonal_naive_daily.mase, r
    assert r.model.mape < r.seasonal_naive_weekly.mape
    # MASE is MAE over the weekly naive's in-sample MAE: the three are consistent.
    assert r.model.mase == pytest.approx(r.model.mae / r.scale)


def test_mase_scale_is_the_in_sample_weekly_naive_mae() -> None:
    values = np.arange(20 * SLOTS, dtype=np.float64)  # each value 336 more than a week before
    assert backtest.weekly_naive_scale(values, 10 * SLOTS) == pytest.approx(336.0)


def test_forecast_does_not_change_when_the_future_changes() -> None:
    s = load(40, temperature=True)
    day = 33
    before = backtest.day_ahead(s, day, rounds=60)
    assert before is not None and before.shape == (SLOTS,)
    future = s.values.copy()
    future[day * SLOTS:] = future[day * SLOTS:] * 5 + 1000  # the forecast day and after, made absurd
    altered = backtest.day_ahead(Series(s.first, future, s.temperature), day, rounds=60)
    np.testing.assert_array_equal(before, altered)
    # ... and the features of the forecast day are the same too, also when built from the whole series.
    whole = build(Series(s.first, future, s.temperature))
    cut = build(Series(s.first, np.concatenate([s.values[:day * SLOTS], np.full(SLOTS, np.nan)]),
                       s.temperature[:(day + 1) * SLOTS] if s.temperature is not None else None))
    np.testing.assert_array_equal(whole.x[day * SLOTS:(day + 1) * SLOTS], cut.x[day * SLOTS:])
    # Past values do reach it: the test can fail.
    past = s.values.copy()
    past[(day - 1) * SLOTS:day * SLOTS] *= 3
    changed = backtest.day_ahead(Series(s.first, past, s.temperature), day, rounds=60)
    assert changed is not None and not np.array_equal(before, changed)


def test_too_short_a_series_is_refused() -> None:
    with pytest.raises(ValueError, match="test days"):
        backtest.run(Series(date(2025, 1, 1), np.ones(10 * SLOTS)), test_days=5)
