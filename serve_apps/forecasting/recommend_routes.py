"""`GET /api/v1/devices/{id}/recommendations` and `GET /api/v1/organisations/{id}/recommendations`.

From the last `days` whole local days of the device's (or the organisation's summed) half-hours: the
cheapest tariff with its saving, peak-shifting candidates, an abnormal night baseload, and half-hours
of the last days outside the forecast's prediction interval (meterray.forecasting.recommendations).
Prices are query parameters (per kWh); the defaults are examples, not a region's tariff.
"""
from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any
from uuid import UUID
from zoneinfo import ZoneInfo

import numpy as np
from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel

from meterray.forecasting import recommendations as rec
from meterray.forecasting import training
from meterray.forecasting.features import SLOTS, Series
from meterray.settings import Settings
from protocols.modbus.profiles import wrap_value
from serve_apps.auth import CurrentPrincipal
from serve_apps.deps import AppSettings, Db
from serve_apps.forecasting import access, service
from storage.postgres import consumption as cons
from storage.postgres import forecasting as repo

recommend_router = APIRouter(prefix="/api/v1", tags=["recommendations"])
ANOMALY_DAYS = 2  # the last two whole days and today so far are checked against the forecast
HALF_HOUR = timedelta(minutes=30)


class RecommendationsOut(BaseModel):
    device_id: str | None = None
    organisation_id: str | None = None
    devices: int = 1
    timezone: str
    period: dict[str, Any]
    prices: dict[str, float]
    zones: dict[str, str]
    tariff: dict[str, Any]
    peak_shift: dict[str, Any]
    night_baseload: dict[str, Any]
    anomalies: dict[str, Any]


def _prices(one_rate: float, day: float, night: float, peak: float, semi_peak: float) -> rec.Prices:
    return rec.Prices(one_rate, day, night, peak, semi_peak)


Days = Annotated[int, Query(ge=7, le=92, description="whole local days before today analysed (default 28)")]
Price = Annotated[float, Query(ge=0, description="per kWh")]


async def _read(db: Db, settings: Settings, device_id: str, days: int, now: datetime
                ) -> tuple[str, Series, int] | None:
    """The device's series from `history` days before the analysed period through today; returns the zone,
    the series and the index of today."""
    device = await cons.metering(db, device_id, organisation_id=None)  # the caller was checked (access.py)
    if device is None:
        return None
    tz = device.timezone or settings.default_timezone
    today = now.astimezone(ZoneInfo(tz)).date()
    back = max(days, service.HISTORY_DAYS + ANOMALY_DAYS)
    s = await repo.device_series(db, device, tz, today - timedelta(days=back), back + 1, cons.to_ms(now),
                                 wrap_value(device.profile, repo.ACTIVE_IMPORT))
    return tz, s, back


def _analyse(s: Series, today: int, days: int, prices: rec.Prices) -> dict[str, Any]:
    period = Series(s.day(today - days), s.values[(today - days) * SLOTS:today * SLOTS])
    t = rec.tariff_choice(period, prices)
    p = rec.peak_shift(period, prices)
    b = rec.night_baseload(period, prices)
    names = {"one_rate": "one-rate", "two_zone": "two-zone (day/night)",
             "three_zone": "three-zone (peak/semi-peak/night)"}
    return {
        "tariff": {**dataclasses.asdict(t), "recommendation":
                   f"{names[t.best]}: {t.saving_vs_one_rate:.2f} less than one-rate over {t.days} days "
                   f"({t.saving_vs_one_rate_per_year:.0f} a year)" if t.best != "one_rate" else
                   "one-rate: no zone tariff is cheaper for this load"},
        "peak_shift": {**dataclasses.asdict(p), "recommendation":
                       f"moving {rec.SHIFT_SHARE:.0%} of the peak-zone energy ({p.shifted_kwh_per_working_day:.2f} kWh "
                       f"a working day) to the night saves {p.saving_per_year:.0f} a year on a three-zone tariff"},
        "night_baseload": {**dataclasses.asdict(b), "recommendation":
                           "; ".join(b.reasons) if b.abnormal else "night baseload is normal"},
        "period": {"from": str(period.first), "to": str(period.day(period.days - 1)), "days": days},
    }


async def _anomalies(trained: training.Trained | None, s: Series, today: int, tz: str, now: datetime
                     ) -> list[dict[str, Any]]:
    if trained is None:
        return []
    out = []
    z = ZoneInfo(tz)
    for d in range(today - ANOMALY_DAYS, today + 1):
        f = training.forecast_day(trained, s, d)
        actual = s.values[d * SLOTS:(d + 1) * SLOTS]
        day = s.day(d)
        midnight = datetime(day.year, day.month, day.day, tzinfo=z)
        for a in rec.anomalies(actual, f.point, f.lower, f.upper):
            start = midnight + a.index * HALF_HOUR
            if start + HALF_HOUR > now:
                continue
            out.append({"start": start.isoformat(), "actual_kwh": a.actual, "forecast_kwh": a.forecast,
                        "lower_kwh": a.lower, "upper_kwh": a.upper,
                        "kind": "above the interval" if a.actual > a.upper else "below the interval"})
    return out


async def _model(db: Db) -> tuple[int | None, training.Trained | None]:
    try:
        return await service.latest(db)
    except service.NoModel:
        return None, None


def _zones() -> dict[str, str]:
    return {"night": "23:00-07:00", "peak": "07:00-10:00, 17:00-21:00", "semi_peak": "10:00-17:00, 21:00-23:00",
            "day": "07:00-23:00", "source": "ФСТ России, приказ от 26.11.2013 № 1473-э (local time)"}


@recommend_router.get("/devices/{device_id}/recommendations", response_model=RecommendationsOut)
async def device_recommendations(
    device_id: str, who: CurrentPrincipal, db: Db, settings: AppSettings, days: Days = 28,
    price_one_rate: Price = rec.Prices.one_rate, price_day: Price = rec.Prices.day,
    price_night: Price = rec.Prices.night, price_peak: Price = rec.Prices.peak,
    price_semi_peak: Price = rec.Prices.semi_peak,
) -> RecommendationsOut:
    await access.visible_device(db, who, device_id)
    prices = _prices(price_one_rate, price_day, price_night, price_peak, price_semi_peak)
    now = datetime.now(timezone.utc)
    got = await _read(db, settings, device_id, days, now)
    if got is None:
        raise HTTPException(404, f"no device {device_id!r}")
    tz, s, today = got
    version, trained = await _model(db)
    found = await _anomalies(trained, s, today, tz, now)
    return RecommendationsOut(device_id=device_id, timezone=tz, prices=dataclasses.asdict(prices), zones=_zones(),
                              anomalies=_anomaly_block(version, trained, found), **_analyse(s, today, days, prices))


@recommend_router.get("/organisations/{organisation_id}/recommendations", response_model=RecommendationsOut)
async def organisation_recommendations(
    organisation_id: UUID, who: CurrentPrincipal, db: Db, settings: AppSettings, days: Days = 28,
    price_one_rate: Price = rec.Prices.one_rate, price_day: Price = rec.Prices.day,
    price_night: Price = rec.Prices.night, price_peak: Price = rec.Prices.peak,
    price_semi_peak: Price = rec.Prices.semi_peak,
) -> RecommendationsOut:
    ids = await access.organisation_device_ids(db, who, organisation_id)
    if not ids:
        raise HTTPException(404, f"organisation {organisation_id} has no devices")
    prices = _prices(price_one_rate, price_day, price_night, price_peak, price_semi_peak)
    now = datetime.now(timezone.utc)
    version, trained = await _model(db)
    total: np.ndarray | None = None
    found: list[dict[str, Any]] = []
    tz, first, today = settings.default_timezone, None, 0
    for device_id in ids:
        got = await _read(db, settings, device_id, days, now)
        if got is None:
            continue
        d_tz, s, today = got
        # The organisation's half-hours: the sum of its devices' (a half-hour missing at one device is
        # missing in the sum, so a day is compared only when every device has it).
        total = s.values.copy() if total is None else total + s.values
        tz, first = (d_tz, s.first) if first is None else (tz, first)
        found += [{"device_id": device_id, **a} for a in await _anomalies(trained, s, today, d_tz, now)]
    if total is None or first is None:
        raise HTTPException(404, f"organisation {organisation_id} has no devices")
    return RecommendationsOut(organisation_id=str(organisation_id), devices=len(ids), timezone=tz,
                              prices=dataclasses.asdict(prices), zones=_zones(),
                              anomalies=_anomaly_block(version, trained, found),
                              **_analyse(Series(first, total), today, days, prices))


def _anomaly_block(version: int | None, trained: training.Trained | None, found: list[dict[str, Any]]
                   ) -> dict[str, Any]:
    if trained is None:
        return {"checked": False, "reason": "no forecasting model is registered yet", "half_hours": []}
    return {"checked": True, "model_version": version, "method": trained.chosen,
            "interval": {"lower_quantile": min(trained.quantiles), "upper_quantile": max(trained.quantiles)},
            "days": ANOMALY_DAYS, "half_hours": found}
