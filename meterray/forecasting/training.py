"""A global model across meters: backtest against the weekly seasonal naive forecast, choose, fit for serving.

One LightGBM model learns every meter's level-normalised load (features.py), so a meter with a few
weeks of history borrows the shape of the others. The last `holdout_days` days of each meter are the
backtest: the model fitted on the days before them forecasts each held-out day at its midnight
(day-ahead, with the values known by then; no refit inside the holdout). The model is chosen only if
its mean MASE beats the weekly seasonal naive forecast's; otherwise that naive forecast is served.
The served model is then refitted on the whole window, with quantile models for the intervals.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np

from meterray.forecasting.backtest import WEEKLY, Scores, scores, weekly_naive_scale
from meterray.forecasting.calendar import day_kind
from meterray.forecasting.features import SLOTS, Array, Calendar, Features, Rows, Series, build
from meterray.forecasting.model import QUANTILES, ROUNDS, Model, fit, seasonal_naive, training_rows

LIGHTGBM, NAIVE = "lightgbm", "seasonal_naive_weekly"
HOLDOUT_DAYS = 7
# Rows fitted at most: a uniform sample above it. 1 M rows (about 57 meter-years of half-hours) keep a
# 1,000-meter year within minutes on 2 cores (bench/forecast_training.py); the trees still see every
# meter and every season, and a 7-leaf model of ~35 features does not need more.
MAX_ROWS = 1_000_000


@dataclass(frozen=True)
class Trained:
    chosen: str
    model: Model | None
    metrics: dict[str, dict[str, float]]
    train_start: date
    train_end: date  # exclusive
    holdout_days: int
    devices: int
    rows: int
    quantiles: tuple[float, ...]
    naive_error_ratios: tuple[float, ...]  # actual / weekly naive at `quantiles`, over the holdout


def _take(f: Features, rows: Rows) -> Features:
    """The given rows of a feature frame (a series' full frame is dropped once these are kept)."""
    return Features(f.names, f.x[rows], f.level[rows], f.target[rows])


def train(series: Mapping[str, Series], holdout_days: int = HOLDOUT_DAYS, calendar: Calendar = day_kind,
          rounds: int = ROUNDS, max_rows: int = MAX_ROWS, quantiles: tuple[float, ...] = QUANTILES,
          seed: int = 7, params: dict[str, Any] | None = None) -> Trained:
    """Backtest, choose and fit. Each series' features are built once and only a uniform sample of its
    rows is kept (at most `max_rows` over all series), plus its holdout rows: memory stays at the
    sample's size however many meter-years come in."""
    usable = {k: s for k, s in series.items() if s.days > holdout_days + 7}
    if not usable:
        raise ValueError(f"no series longer than {holdout_days + 7} days (a week of history and the holdout)")
    rng = np.random.default_rng(seed)
    keep = min(1.0, max_rows / (sum(s.days for s in usable.values()) * SLOTS))
    before: list[Features] = []  # sampled rows before each holdout: the backtest's training set
    after: list[Features] = []  # sampled rows of the holdout: with `before`, the final training set
    holdout: dict[str, tuple[Features, Rows, Array, int]] = {}  # features, rows, values, cut
    for k, s in usable.items():
        f = build(s, calendar)
        cut = (s.days - holdout_days) * SLOTS
        rows = training_rows(f, s.days * SLOTS)
        sampled = rows[rng.random(len(rows)) < keep] if keep < 1 else rows
        before.append(_take(f, sampled[sampled < cut]))
        after.append(_take(f, sampled[sampled >= cut]))
        hold = np.arange(cut, s.days * SLOTS)
        holdout[k] = (_take(f, hold), hold, s.values.astype(np.float64), cut)
    holdout_model = fit([(f, np.arange(len(f.target))) for f in before], rounds=rounds, params=params)
    metrics, ratios = _evaluate(holdout, holdout_model, quantiles)
    better = holdout_model is not None and metrics["model"]["mase"] < metrics["seasonal_naive_weekly"]["mase"]
    parts = [(f, np.arange(len(f.target))) for f in before + after]
    final = fit(parts, quantiles=quantiles, rounds=rounds, params=params) if better else None
    return Trained(
        chosen=LIGHTGBM if better and final is not None else NAIVE, model=final, metrics=metrics,
        train_start=min(s.first for s in usable.values()),
        train_end=max(s.first + timedelta(days=s.days) for s in usable.values()),
        holdout_days=holdout_days, devices=len(usable), rows=sum(len(r) for _, r in parts),
        quantiles=quantiles, naive_error_ratios=ratios)


def _evaluate(holdout: Mapping[str, tuple[Features, Rows, Array, int]], model: Model | None,
              quantiles: tuple[float, ...]) -> tuple[dict[str, dict[str, float]], tuple[float, ...]]:
    """Mean MASE (each meter scaled by its own in-sample weekly naive MAE), pooled MAPE and MAE."""
    per: dict[str, list[Scores]] = {"model": [], "seasonal_naive_daily": [], "seasonal_naive_weekly": []}
    pooled: dict[str, list[tuple[Array, Array]]] = {k: [] for k in per}
    ratios: list[Array] = []
    for f, rows, values, cut in holdout.values():
        actual = values[rows]
        scale = weekly_naive_scale(values, cut)
        weekly = seasonal_naive(values, rows, WEEKLY)
        model_fc = model.predict(f, slice(None)) if model is not None else weekly
        for name, fc in (("model", model_fc), ("seasonal_naive_daily", seasonal_naive(values, rows, SLOTS)),
                         ("seasonal_naive_weekly", weekly)):
            per[name].append(scores(actual, fc, scale))
            pooled[name].append((actual, fc))
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios.append(actual / weekly)
    out: dict[str, dict[str, float]] = {}
    for name, lst in per.items():
        a = np.concatenate([p[0] for p in pooled[name]])
        fc_all = np.concatenate([p[1] for p in pooled[name]])
        p = scores(a, fc_all, 1.0)
        mase = [x.mase for x in lst if np.isfinite(x.mase)]
        out[name] = {"mase": float(np.mean(mase)) if mase else float("nan"), "mape": p.mape, "mae": p.mae}
    r = np.concatenate(ratios) if ratios else np.array([])
    r = r[np.isfinite(r)]
    return out, tuple(float(np.quantile(r, q)) if len(r) else 1.0 for q in quantiles)


@dataclass(frozen=True)
class DayForecast:
    point: Array  # (48,)
    lower: Array
    upper: Array


def forecast_day(trained: Trained, series: Series, day: int, calendar: Calendar = day_kind) -> DayForecast:
    """Day `day` of `series` forecast at its midnight (values from day `day` on are ignored): the model's
    point and interval, or the weekly naive with its backtest's error ratios when that was chosen."""
    known = np.concatenate([series.values[:day * SLOTS], np.full(SLOTS, np.nan)])
    s = Series(series.first, known.astype(np.float64),
               None if series.temperature is None else series.temperature[:(day + 1) * SLOTS],
               tuple((k, v[:(day + 1) * SLOTS]) for k, v in series.extras))
    rows = np.arange(day * SLOTS, (day + 1) * SLOTS)
    if trained.chosen == LIGHTGBM and trained.model is not None:
        f = build(s, calendar)
        point = trained.model.predict(f, rows)
        qs = trained.model.predict_quantiles(f, rows)
        lower, upper = qs[min(qs)], qs[max(qs)]
        # Quantile models are fitted separately: keep the band around the point and non-negative.
        return DayForecast(np.maximum(point, 0), np.maximum(np.minimum(lower, point), 0), np.maximum(upper, point))
    point = seasonal_naive(s.values, rows, WEEKLY)
    lo, hi = min(trained.naive_error_ratios), max(trained.naive_error_ratios)
    # The ratios are actual / naive over the holdout: a naive forecast that ran low there has both above 1.
    # The band still holds the point served, as the model's does.
    return DayForecast(point, np.minimum(point * lo, point), np.maximum(point * hi, point))


def registry_fields(t: Trained) -> dict[str, Any]:
    """The registry row's values (storage writes them)."""
    return {"train_start": t.train_start, "train_end": t.train_end, "holdout_days": t.holdout_days,
            "devices": t.devices, "training_rows": t.rows, "chosen": t.chosen, "metrics": t.metrics,
            "interval_quantiles": list(t.quantiles), "naive_error_ratios": list(t.naive_error_ratios),
            "model": None if t.model is None else t.model.dump()}


def from_registry(row: Mapping[str, Any]) -> Trained:
    return Trained(
        chosen=row["chosen"], model=None if row["model"] is None else Model.load(row["model"]),
        metrics=row["metrics"], train_start=row["train_start"], train_end=row["train_end"],
        holdout_days=row["holdout_days"], devices=row["devices"], rows=row["training_rows"],
        quantiles=tuple(row["interval_quantiles"]), naive_error_ratios=tuple(row["naive_error_ratios"]))
