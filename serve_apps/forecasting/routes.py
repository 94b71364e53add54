"""`GET /api/v1/devices/{id}/forecast`, `GET /api/v1/organisations/{id}/forecast` and the model registry.

Authenticated; a customer sees its own organisation's devices only (serve_apps.forecasting.access).
An organisation's total adds the devices' forecasts; its interval adds their bounds, which is the
interval of the sum only if the devices' errors move together (conservative: wider than the true one).
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Annotated
from uuid import UUID

import numpy as np
from fastapi import APIRouter, HTTPException, Query

from serve_apps.auth import CurrentPrincipal
from serve_apps.deps import AppSettings, Db
from serve_apps.forecasting import access, service
from serve_apps.forecasting.schemas import ForecastOut, ForecastPoint, ModelOut
from storage.postgres import forecasting as repo

forecast_router = APIRouter(prefix="/api/v1", tags=["forecasting"])
HALF_HOUR = timedelta(minutes=30)
Horizon = Annotated[int, Query(ge=1, le=48, description="half-hours from the current one (at most 48)")]


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 6)


def _points(starts: list[datetime], point: np.ndarray, lower: np.ndarray,
            upper: np.ndarray) -> list[ForecastPoint]:
    return [ForecastPoint(start=s, end=s + HALF_HOUR, energy=_num(p), lower=_num(lo), upper=_num(hi))
            for s, p, lo, hi in zip(starts, point, lower, upper, strict=True)]


async def _model(db: Db) -> tuple[int, service.training.Trained]:
    try:
        return await service.latest(db)
    except service.NoModel as err:
        raise HTTPException(503, str(err)) from None


@forecast_router.get("/devices/{device_id}/forecast", response_model=ForecastOut)
async def device_forecast(device_id: str, who: CurrentPrincipal, db: Db, settings: AppSettings,
                          horizon: Horizon = 48) -> ForecastOut:
    await access.visible_device(db, who, device_id)
    version, trained = await _model(db)
    now = datetime.now(timezone.utc)
    f = await service.device_forecast(db, settings, trained, device_id, now, horizon)
    if f is None:
        raise HTTPException(404, f"no device {device_id!r}")
    return ForecastOut(device_id=device_id, timezone=f.timezone, issued_at=now, horizon=horizon,
                       model_version=version, method=f.method, interval=_interval(trained),
                       points=_points(f.starts, f.point, f.lower, f.upper))


@forecast_router.get("/organisations/{organisation_id}/forecast", response_model=ForecastOut)
async def organisation_forecast(organisation_id: UUID, who: CurrentPrincipal, db: Db, settings: AppSettings,
                                horizon: Horizon = 48) -> ForecastOut:
    ids = await access.organisation_device_ids(db, who, organisation_id)
    version, trained = await _model(db)
    now = datetime.now(timezone.utc)
    total = np.zeros((3, horizon))
    missing, tz, starts = 0, settings.default_timezone, None
    for device_id in ids:
        f = await service.device_forecast(db, settings, trained, device_id, now, horizon)
        if f is None or np.isnan(f.point).all():
            missing += 1
            continue
        # Half-hours are aligned on the organisation's first device's zone; devices in other zones
        # still add up per absolute half-hour, since every zone offset here is whole or half hours.
        if starts is None:
            starts, tz = f.starts, f.timezone
        total += np.nan_to_num(np.stack([f.point, f.lower, f.upper]))
    if starts is None:
        starts = [now.astimezone(timezone.utc).replace(minute=30 * (now.minute // 30), second=0, microsecond=0)
                  + i * HALF_HOUR for i in range(horizon)]
        total[:] = np.nan
    return ForecastOut(organisation_id=str(organisation_id), devices=len(ids), devices_without_forecast=missing,
                       timezone=tz, issued_at=now, horizon=horizon, model_version=version, method=trained.chosen,
                       interval=_interval(trained), points=_points(starts, total[0], total[1], total[2]))


@forecast_router.get("/forecast/models", response_model=list[ModelOut])
async def models(who: CurrentPrincipal, db: Db, limit: Annotated[int, Query(ge=1, le=200)] = 20) -> list[ModelOut]:
    """The registry, newest first: training window, backtest metrics and the method chosen (no customer data)."""
    return [ModelOut(**r) for r in await repo.models(db, limit)]


def _interval(trained: service.training.Trained) -> dict[str, float]:
    return {"lower_quantile": min(trained.quantiles), "upper_quantile": max(trained.quantiles)}
