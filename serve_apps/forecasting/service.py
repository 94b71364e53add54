"""Forecasts of devices from the latest registered model (cached per replica, reloaded when a newer
version is registered), from the last midnight's data onward."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import numpy as np

from meterray.forecasting import training
from meterray.forecasting.features import SLOTS, Series
from meterray.settings import Settings
from protocols.modbus.profiles import wrap_value
from storage.postgres import consumption as cons
from storage.postgres import forecasting as repo

HISTORY_DAYS = 35  # the longest lag (28 days) and the 7-day level before it

_models: dict[int, training.Trained] = {}


class NoModel(Exception):
    """No model is registered yet."""


async def latest(db: asyncpg.Pool) -> tuple[int, training.Trained]:
    version = await repo.latest_version(db)
    if version is None:
        raise NoModel("no forecasting model is registered yet: train one (`meterray forecast train`)")
    if version not in _models:
        row = await repo.model_row(db, version)
        assert row is not None
        _models.clear()  # one model per replica: the newest
        _models[version] = training.from_registry(row)
    return version, _models[version]


@dataclass(frozen=True)
class DeviceForecast:
    device_id: str
    timezone: str
    method: str
    starts: list[datetime]  # local start of each half-hour
    point: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    actual: np.ndarray  # measured energy of the same half-hours so far (NaN: not yet / missing)


async def device_forecast(db: asyncpg.Pool, settings: Settings, trained: training.Trained, device_id: str,
                          now: datetime, horizon: int, back: int = 0) -> DeviceForecast | None:
    """`horizon` half-hours from the one holding `now` (and `back` half-hours before it): today's from the
    forecast issued at the last local midnight, tomorrow's from the forecast issued with today's values
    as far as known and today's forecast for the rest."""
    device = await cons.metering(db, device_id, organisation_id=None)  # the caller was checked (access.py)
    if device is None:
        return None
    tz = device.timezone or settings.default_timezone
    local_now = now.astimezone(ZoneInfo(tz))
    today = local_now.date()
    first = today - timedelta(days=HISTORY_DAYS)
    series = await repo.device_series(db, device, tz, first, HISTORY_DAYS + 2, cons.to_ms(now),
                                      wrap_value(device.profile, repo.ACTIVE_IMPORT))
    t = HISTORY_DAYS
    fc_today = training.forecast_day(trained, series, t)
    filled = series.values.copy()
    today_vals = filled[t * SLOTS:(t + 1) * SLOTS]
    today_vals[np.isnan(today_vals)] = fc_today.point[np.isnan(today_vals)]
    fc_next = training.forecast_day(trained, Series(series.first, filled), t + 1)
    point = np.concatenate([fc_today.point, fc_next.point])
    lower = np.concatenate([fc_today.lower, fc_next.lower])
    upper = np.concatenate([fc_today.upper, fc_next.upper])
    actual = series.values[t * SLOTS:(t + 2) * SLOTS]
    current = local_now.hour * 2 + local_now.minute // 30
    lo, hi = max(0, current - back), current + horizon
    midnight = datetime(today.year, today.month, today.day, tzinfo=ZoneInfo(tz))
    starts = [midnight + timedelta(minutes=30 * i) for i in range(lo, hi)]
    return DeviceForecast(device_id, tz, trained.chosen, starts, point[lo:hi], lower[lo:hi], upper[lo:hi],
                          actual[lo:hi])
