"""The global model's choice: LightGBM when it beats the weekly seasonal naive forecast on the backtest,
the naive forecast (with intervals from its own errors) when it does not."""
from __future__ import annotations

import dataclasses
from datetime import date

import numpy as np

from meterray.forecasting import training
from meterray.forecasting.features import SLOTS, Series
from tests.meterray.forecasting.synthetic import load


def test_model_chosen_when_it_beats_weekly_naive() -> None:
    series = {f"m{i}": load(42, seed=i) for i in range(3)}
    t = training.train(series, rounds=150)
    assert t.metrics["model"]["mase"] < t.metrics["seasonal_naive_weekly"]["mase"]
    assert t.chosen == training.LIGHTGBM and t.model is not None and t.devices == 3
    fc = training.forecast_day(t, series["m0"], 41)
    assert fc.point.shape == (SLOTS,) and np.all(fc.lower <= fc.point) and np.all(fc.point <= fc.upper)
    # The registry round trip serves the same forecast.
    again = training.from_registry({**training.registry_fields(t), "training_rows": t.rows})
    np.testing.assert_allclose(training.forecast_day(again, series["m0"], 41).point, fc.point)


def test_weekly_naive_chosen_when_the_model_does_not_beat_it() -> None:
    # A load that repeats exactly every week (a random week, copied): the weekly naive forecast is perfect,
    # nothing can beat an error of 0, so the naive forecast must be served.
    rng = np.random.default_rng(3)
    week = rng.uniform(1, 10, 7 * SLOTS)
    series = {f"w{i}": Series(date(2025, 9, 1), np.tile(week * (i + 1), 6)) for i in range(2)}
    t = training.train(series, rounds=100)
    assert t.metrics["seasonal_naive_weekly"]["mae"] == 0.0 and t.metrics["model"]["mae"] > 0
    assert t.chosen == training.NAIVE and t.model is None
    fc = training.forecast_day(t, series["w1"], 41)
    np.testing.assert_array_equal(fc.point, series["w1"].values[34 * SLOTS:35 * SLOTS])
    assert t.naive_error_ratios == (1.0, 1.0)  # a perfect naive forecast: a zero-width interval


def test_the_naive_forecast_lies_inside_its_own_band() -> None:
    # A load that grows 10 % a week: the weekly naive forecast runs low on every holdout day, so both its
    # error ratios are above 1; the band served must still contain the point served.
    rng = np.random.default_rng(5)
    week = rng.uniform(1, 10, 7 * SLOTS)
    grown = np.concatenate([week * 1.1 ** k for k in range(6)])
    series = {f"g{i}": Series(date(2025, 9, 1), grown * (i + 1)) for i in range(2)}
    t = training.train(series, rounds=30)
    t = dataclasses.replace(t, chosen=training.NAIVE, model=None)  # whichever won, the naive forecast is served
    assert min(t.naive_error_ratios) > 1.0
    fc = training.forecast_day(t, series["g1"], 41)
    assert np.all(fc.lower <= fc.point) and np.all(fc.point <= fc.upper) and np.any(fc.upper > fc.point)
