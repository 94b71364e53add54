"""The forecasting model: LightGBM on the level-normalised features (point and quantile models), and
the seasonal naive forecasts it is measured against."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np

from meterray.forecasting.features import SLOTS, Array, Features, Rows

# Tuned on the England & Wales 2000 series and simulated meters by day-ahead backtests (see the
# README's forecasting section): L1 loss (the MAE/MASE the model is judged by), small leaves, many
# shallow rounds with row/feature subsampling, which is what little data (weeks of half-hours) tolerates.
PARAMS: dict[str, Any] = {
    "objective": "l2",
    "learning_rate": 0.05,
    "num_leaves": 7,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    "seed": 7,
    "deterministic": True,
    "num_threads": 1,  # several fits run side by side (Ray tasks, backtest origins): one core each
}
ROUNDS = 400
QUANTILES = (0.1, 0.9)  # an 80 % prediction interval
MIN_TRAIN_ROWS = 7 * SLOTS  # below a week of usable rows a model is not fitted


@dataclass(frozen=True)
class Model:
    """A fitted point model and its quantile models (LightGBM boosters), with the feature names they expect."""

    names: tuple[str, ...]
    point: lgb.Booster
    quantiles: tuple[tuple[float, lgb.Booster], ...] = ()

    def predict(self, f: Features, rows: slice | Rows) -> Array:
        """Point forecasts (in the series' units) for the given rows of `f`."""
        self._check(f)
        return np.asarray(self.point.predict(f.x[rows]), dtype=np.float64) * f.level[rows]

    def predict_quantiles(self, f: Features, rows: slice | Rows) -> dict[float, Array]:
        self._check(f)
        return {q: np.asarray(b.predict(f.x[rows]), dtype=np.float64) * f.level[rows] for q, b in self.quantiles}

    def _check(self, f: Features) -> None:
        if f.names != self.names:
            raise ValueError(f"model expects features {self.names}, got {f.names}")

    def dump(self) -> dict[str, Any]:
        """A JSON-able form (LightGBM's own text format per booster), for the model registry."""
        return {"names": list(self.names), "point": self.point.model_to_string(),
                "quantiles": [[q, b.model_to_string()] for q, b in self.quantiles]}

    @staticmethod
    def load(d: dict[str, Any]) -> Model:
        return Model(tuple(d["names"]), lgb.Booster(model_str=d["point"]),
                     tuple((float(q), lgb.Booster(model_str=s)) for q, s in d["quantiles"]))


def training_rows(f: Features, end_row: int, start_row: int = 0) -> Rows:
    """Indices of rows before `end_row` with a known target and level."""
    idx = np.arange(start_row, end_row)
    ok = np.isfinite(f.target[start_row:end_row]) & np.isfinite(f.level[start_row:end_row])
    return idx[ok]


def fit(parts: Sequence[tuple[Features, Rows]], quantiles: Sequence[float] = (), rounds: int = ROUNDS,
        params: dict[str, Any] | None = None) -> Model | None:
    """Fit on the given rows of one or more series' features (a global model when several); None when
    there are fewer than MIN_TRAIN_ROWS rows."""
    if not parts:
        return None
    names = parts[0][0].names
    if any(f.names != names for f, _ in parts):
        raise ValueError("all series must have the same feature columns")
    x = np.concatenate([f.x[r] for f, r in parts])
    y = np.concatenate([f.target[r] for f, r in parts])
    if len(y) < MIN_TRAIN_ROWS:
        return None
    base = {**PARAMS, **(params or {})}
    ds = lgb.Dataset(x, y, feature_name=list(names), free_raw_data=False, params={"verbose": -1})
    point = lgb.train(base, ds, num_boost_round=rounds)
    qs = tuple((q, lgb.train({**base, "objective": "quantile", "alpha": q}, ds, num_boost_round=rounds // 2))
               for q in quantiles)
    return Model(names, point, qs)


def seasonal_naive(values: Array, rows: Rows, lag: int) -> Array:
    """The value `lag` half-hours earlier (48: yesterday, 336: the same half-hour a week ago)."""
    src = rows - lag
    out = np.full(len(rows), np.nan)
    ok = src >= 0
    out[ok] = values[src[ok]]
    return out
