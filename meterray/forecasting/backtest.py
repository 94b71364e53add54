"""Day-ahead rolling-origin backtest and its error measures.

Forecasts are issued at each test day's local midnight for its 48 half-hours; the model is refitted
at every origin on all days before it, and its features are built from the series cut at the origin
(so no value after the origin can reach a forecast; the test in tests/meterray/forecasting checks it).
MASE (Hyndman & Koehler 2006) is scaled by the in-sample MAE of the weekly seasonal naive forecast
(lag 336) over the training part: below 1 beats that naive forecast's typical in-sample error.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meterray.forecasting.calendar import day_kind
from meterray.forecasting.features import SLOTS, Array, Calendar, Series, build
from meterray.forecasting.model import ROUNDS, fit, seasonal_naive, training_rows

DAILY, WEEKLY = SLOTS, 7 * SLOTS


@dataclass(frozen=True, slots=True)
class Scores:
    mase: float
    mape: float  # per cent, over half-hours with a non-zero actual value
    mae: float

    def as_dict(self) -> dict[str, float]:
        return {"mase": self.mase, "mape": self.mape, "mae": self.mae}


@dataclass(frozen=True)
class Backtest:
    horizon: int
    test_days: int
    model: Scores
    seasonal_naive_daily: Scores
    seasonal_naive_weekly: Scores
    scale: float  # the in-sample MAE of the weekly naive forecast
    points: int  # test half-hours scored
    fallback_days: int  # test days where too little history was there to fit a model (weekly naive used)
    actual: Array
    forecast: Array

    def as_json(self) -> dict[str, object]:
        return {"horizon": self.horizon, "test_days": self.test_days, "model": self.model.as_dict(),
                "seasonal_naive_daily": self.seasonal_naive_daily.as_dict(),
                "seasonal_naive_weekly": self.seasonal_naive_weekly.as_dict()}


def weekly_naive_scale(values: Array, end: int) -> float:
    """In-sample MAE of the lag-336 forecast over values[:end] (NaN pairs skipped)."""
    if end <= WEEKLY:
        return float("nan")
    err = np.abs(values[WEEKLY:end] - values[:end - WEEKLY])
    return float(np.nanmean(err)) if np.isfinite(err).any() else float("nan")


def scores(actual: Array, forecast: Array, scale: float) -> Scores:
    ok = np.isfinite(actual) & np.isfinite(forecast)
    if not ok.any():
        return Scores(float("nan"), float("nan"), float("nan"))
    err = np.abs(actual[ok] - forecast[ok])
    mae = float(err.mean())
    nz = actual[ok] != 0
    mape = float(100 * np.mean(err[nz] / np.abs(actual[ok][nz]))) if nz.any() else float("nan")
    return Scores(mae / scale if scale > 0 else float("nan"), mape, mae)


def day_ahead(series: Series, day: int, calendar: Calendar = day_kind, rounds: int = ROUNDS) -> Array | None:
    """The forecast of day `day` (48 values) issued at its midnight, from a model fitted on the days
    before it; None when there is too little history to fit one."""
    cut = series.upto(day + 1)  # values of `day` are in the frame but only as its target, never a feature
    known = Series(cut.first, np.concatenate([cut.values[:day * SLOTS], np.full(SLOTS, np.nan)]),
                   cut.temperature, cut.extras)
    f = build(known, calendar)
    model = fit([(f, training_rows(f, day * SLOTS))], rounds=rounds)
    if model is None:
        return None
    return model.predict(f, slice(day * SLOTS, (day + 1) * SLOTS))


def run(series: Series, test_days: int, horizon: int = SLOTS, calendar: Calendar = day_kind,
        rounds: int = ROUNDS) -> Backtest:
    if horizon != SLOTS:
        raise ValueError(f"the backtest is day-ahead from midnight: horizon must be {SLOTS}")
    if not 0 < test_days < series.days - 7:
        raise ValueError(f"test days must be between 1 and {series.days - 8} for a series of {series.days} days "
                         "(at least a week of training history)")
    first_test = series.days - test_days
    values = series.values.astype(np.float64)
    forecast = np.full(test_days * SLOTS, np.nan)
    fallback = 0
    for i, day in enumerate(range(first_test, series.days)):
        pred = day_ahead(series, day, calendar, rounds)
        if pred is None:
            fallback += 1
            pred = seasonal_naive(values, np.arange(day * SLOTS, (day + 1) * SLOTS), WEEKLY)
        forecast[i * SLOTS:(i + 1) * SLOTS] = pred
    rows = np.arange(first_test * SLOTS, series.days * SLOTS)
    actual = values[rows]
    scale = weekly_naive_scale(values, first_test * SLOTS)
    ok = np.isfinite(actual)
    return Backtest(
        horizon=horizon, test_days=test_days,
        model=scores(actual, forecast, scale),
        seasonal_naive_daily=scores(actual, seasonal_naive(values, rows, DAILY), scale),
        seasonal_naive_weekly=scores(actual, seasonal_naive(values, rows, WEEKLY), scale),
        scale=scale, points=int(ok.sum()), fallback_days=fallback, actual=actual, forecast=forecast)
