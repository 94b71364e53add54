"""What the cabinet shows from the analytics APIs (forecasts, recommendations, the ClickHouse copy), read
through those APIs' own functions in-process, with the APIs' own scope checks (data.visible; data.device
where a function has none): the forecast band of a device's consumption chart, the organisation's forecast
beside the dashboard's totals, the recommendations with their numbers, and a year of half-hours for one chart.

The forecasting model is day-ahead (meterray.forecasting): today's half-hours are forecast at the last local
midnight, tomorrow's with today's values as far as known (serve_apps.forecasting.service). So the band
covers today from midnight (beside the measured half-hours) and the next 24 hours, and the month's
expected total is an estimate: the month so far, the rest of today, and the next 24 hours' forecast for
each day left.
"""
from __future__ import annotations

import math
from calendar import monthrange
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from fastapi import HTTPException

from meterray.forecasting import recommendations as rec
from meterray.intervals import Size
from meterray.settings import Settings
from serve_apps.cabinet import data
from serve_apps.cabinet.session import Viewer
from serve_apps.forecasting import recommend_routes, service
from serve_apps.forecasting import routes as forecast_api
from serve_apps.forecasting.schemas import ForecastPoint
from serve_apps.monitoring import aggregates as aggregates_api
from storage.postgres import cabinet as repo

HALF_HOUR = timedelta(minutes=30)
FORECAST_BACK = 48  # half-hours before the current one: today from its local midnight
FORECAST_AHEAD = 48  # the API's longest horizon: the next 24 hours
YEAR_DAYS = 365  # 17,520 half-hours: within the aggregates API's 20,000 intervals a request
REC_DEVICES = 10  # devices whose recommendations one page computes (each reads its last weeks of half-hours)
REC_DAYS = (7, 14, 28, 56, 92)


# ---- the device's forecast band

@dataclass(frozen=True)
class Band:
    state: str  # "ok" | "no_model" | "no_history"
    points: list[ForecastPoint]
    model_version: int | None = None
    method: str | None = None
    quantiles: tuple[float, float] | None = None
    timezone: str | None = None

    def today(self, now: datetime) -> tuple[float, float, float] | None:
        """The forecast of the whole of today (the device's local day): point, lower, upper."""
        if self.state != "ok" or not self.points or self.timezone is None:
            return None
        day = now.astimezone(ZoneInfo(self.timezone)).date()
        mine = [p for p in self.points if p.start.astimezone(ZoneInfo(self.timezone)).date() == day
                and p.energy is not None]
        if not mine:
            return None
        return (sum(p.energy or 0.0 for p in mine), sum(p.lower or 0.0 for p in mine),
                sum(p.upper or 0.0 for p in mine))


async def device_band(db: asyncpg.Pool, settings: Settings, viewer: Viewer, device_id: str) -> Band:
    """Today's half-hours from the local midnight and the next 24 hours, as the forecast API computes them
    (serve_apps.forecasting.service, points rounded by the API's own `_points`)."""
    await data.device(db, viewer, device_id)
    try:
        version, trained = await service.latest(db)
    except service.NoModel:
        return Band("no_model", [])
    now = datetime.now(timezone.utc)
    f = await service.device_forecast(db, settings, trained, device_id, now, FORECAST_AHEAD, back=FORECAST_BACK)
    if f is None:
        raise data.NotVisible(device_id)
    points = forecast_api._points(f.starts, f.point, f.lower, f.upper)
    state = "ok" if any(p.energy is not None for p in points) else "no_history"
    return Band(state, points, version, f.method, (min(trained.quantiles), max(trained.quantiles)), f.timezone)


def band_series(band: Band, size: Size) -> dict[str, Any]:
    """The band in the chart's columns: half-hours as they are, hours as the sum of their two half-hours
    (bounds added, as the organisation forecast adds its devices': wider than the true interval, never
    narrower). Days and months are longer than the model's horizon: no band."""
    out: dict[str, Any] = {"state": band.state, "model_version": band.model_version, "method": band.method,
                           "quantiles": list(band.quantiles) if band.quantiles else None}
    if band.state != "ok":
        return out
    if size not in (Size.HALF_HOUR, Size.HOUR):
        return {**out, "state": "interval"}
    rows: list[tuple[float, float | None, float | None, float | None]] = []
    if size is Size.HALF_HOUR:
        rows = [(p.start.timestamp(), p.energy, p.lower, p.upper) for p in band.points]
    else:
        by_hour: dict[float, list[ForecastPoint]] = {}
        for p in band.points:
            hour = p.start.replace(minute=0)
            by_hour.setdefault(hour.timestamp(), []).append(p)
        for x, ps in sorted(by_hour.items()):
            whole = len(ps) == 2 and all(p.energy is not None for p in ps)  # an hour only the horizon halves: none
            if whole:
                rows.append((x, _sum([p.energy for p in ps]), _sum([p.lower for p in ps]), _sum([p.upper for p in ps])))
            else:
                rows.append((x, None, None, None))
    return {**out, "x": [r[0] for r in rows], "y": [r[1] for r in rows], "lower": [r[2] for r in rows],
            "upper": [r[3] for r in rows]}


def _sum(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else round(sum(v or 0.0 for v in values), 6)


# ---- the dashboard: the organisation's forecast beside today's and this month's totals

@dataclass(frozen=True)
class Expected:
    state: str  # "ok" | "no_model" | "no_history"
    today: tuple[float, float, float] | None = None  # expected by the end of today: point, lower, upper
    month: tuple[float, float, float] | None = None  # expected by the end of the month (estimate)
    next_day: tuple[float, float, float] | None = None  # the next 24 hours
    devices: int = 0
    without: int = 0
    model_version: int | None = None
    timezone: str | None = None


async def organisation_expected(db: asyncpg.Pool, settings: Settings, viewer: Viewer,
                                totals: data.Totals | None) -> Expected | None:
    """The organisation forecast API's next 24 hours (its devices summed), added to the dashboard's totals:
    today's measured + the rest of today forecast; this month's measured + the rest of today + the next 24
    hours' forecast for every day left in the month. None for a viewer without an organisation."""
    org = viewer.principal.organisation_id
    if org is None or totals is None:
        return None
    try:
        f = await forecast_api.organisation_forecast(organisation_id=org, who=viewer.principal, db=db,
                                                     settings=settings, horizon=FORECAST_AHEAD)
    except HTTPException as err:
        if err.status_code == 503:
            return Expected("no_model")
        return None
    if f.devices == f.devices_without_forecast or all(p.energy is None for p in f.points):
        return Expected("no_history", devices=f.devices, without=f.devices_without_forecast,
                        model_version=f.model_version)
    now = datetime.now(timezone.utc)
    z = ZoneInfo(f.timezone)
    local = now.astimezone(z)
    midnight = datetime(local.year, local.month, local.day, tzinfo=z) + timedelta(days=1)
    rest = [0.0, 0.0, 0.0]
    day = [0.0, 0.0, 0.0]
    for p in f.points:
        values = (p.energy or 0.0, p.lower or 0.0, p.upper or 0.0)
        # The current half-hour counts for its part still to come: the part gone is in the measured total.
        share = min(1.0, max(0.0, (p.end - max(now, p.start)) / HALF_HOUR))
        for i, v in enumerate(values):
            day[i] += v
            if p.start < midnight:
                rest[i] += v * share
    days_left = monthrange(local.year, local.month)[1] - local.day
    today = tuple(totals.today + r for r in rest)
    month = tuple(totals.month + r + days_left * d for r, d in zip(rest, day, strict=True))
    return Expected("ok", (today[0], today[1], today[2]), (month[0], month[1], month[2]), (day[0], day[1], day[2]),
                    f.devices, f.devices_without_forecast, f.model_version, f.timezone)


# ---- recommendations

@dataclass(frozen=True)
class DeviceAdvice:
    device_id: str
    name: str | None
    body: dict[str, Any] | None  # the recommendations API's answer, NaN as None
    error: str | None = None


def _clean(value: Any) -> Any:
    """NaN (no data for a figure) as None, so that pages write a dash."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _readable(body: dict[str, Any]) -> dict[str, Any]:
    """What a page formats in the viewer's locale: the period's days and the anomalies' moments as dates,
    peak candidates' half-hours as clock times ("07:30–08:00", the meter's local time)."""
    period = body["period"]
    period["first"] = datetime.fromisoformat(period["from"])
    period["last"] = datetime.fromisoformat(period["to"])
    for c in body["peak_shift"]["candidates"]:
        start = int(round(c["start_hour"] * 60))
        c["clock"] = f"{start // 60:02d}:{start % 60:02d}–{(start + 30) // 60 % 24:02d}:{(start + 30) % 60:02d}"
    for a in body["anomalies"].get("half_hours", []):
        a["at"] = datetime.fromisoformat(a["start"])
    b = body["night_baseload"]
    b["share_flag"], b["rise_flag"] = rec.BASELOAD_SHARE_FLAG, rec.BASELOAD_RISE_FLAG
    b["high_share"] = b["share"] is not None and b["share"] > rec.BASELOAD_SHARE_FLAG
    b["rose"] = bool(b["weeks_before_kw"] and b["last_week_kw"]
                     and b["last_week_kw"] > rec.BASELOAD_RISE_FLAG * b["weeks_before_kw"])
    body["shift_share"] = rec.SHIFT_SHARE
    return body


def prices_from(query: dict[str, str]) -> dict[str, float]:
    """The prices a viewer typed (per kWh), the API's defaults for the rest or for anything unreadable."""
    defaults = rec.Prices()
    out = {}
    for name in ("one_rate", "day", "night", "peak", "semi_peak"):
        raw = query.get(f"price_{name}", "").strip().replace(",", ".")
        try:
            value = float(raw)
        except ValueError:
            value = getattr(defaults, name)
        out[name] = value if math.isfinite(value) and 0 <= value <= 1e6 else getattr(defaults, name)
    return out


async def recommendations(db: asyncpg.Pool, settings: Settings, viewer: Viewer, days: int,
                          prices: dict[str, float]) -> tuple[dict[str, Any] | None, list[DeviceAdvice], int]:
    """The organisation's recommendations (its devices summed) and each of its first REC_DEVICES metered
    devices', from the recommendations API's functions; and how many metered devices there are."""
    p = {f"price_{k}": v for k, v in prices.items()}
    org_id = viewer.principal.organisation_id
    org: dict[str, Any] | None = None
    if org_id is not None:
        try:
            got = await recommend_routes.organisation_recommendations(
                organisation_id=org_id, who=viewer.principal, db=db, settings=settings, days=days, **p)
            org = _readable(_clean(got.model_dump()))
        except HTTPException:  # no devices (yet)
            org = None
    ids = await repo.metered_ids(db, org_id, viewer.everything, data.ACTIVE_IMPORT, REC_DEVICES + 1)
    out = []
    for device_id in ids[:REC_DEVICES]:
        row = await data.device(db, viewer, device_id)
        try:
            body = await recommend_routes.device_recommendations(device_id=device_id, who=viewer.principal, db=db,
                                                                 settings=settings, days=days, **p)
            out.append(DeviceAdvice(device_id, row["name"], _readable(_clean(body.model_dump()))))
        except HTTPException as err:
            out.append(DeviceAdvice(device_id, row["name"], None, str(err.detail)))
    return org, out, len(ids)


# ---- a year of half-hours from the ClickHouse copy

async def year_series(db: asyncpg.Pool, settings: Settings, viewer: Viewer, device_id: str) -> dict[str, Any]:
    """The last YEAR_DAYS days of half-hour energy from the aggregates API (ClickHouse), as one column on a
    regular grid: x is `start + i * step` (not sent), y null where no reading was copied. About 6 bytes a
    half-hour: a year is ~100 kB, not the ~2 MB of the API's objects."""
    now = datetime.now(timezone.utc)
    hi = now.replace(minute=30 * (now.minute // 30), second=0, microsecond=0) + HALF_HOUR
    lo = hi - timedelta(days=YEAR_DAYS)
    body = await data.visible(aggregates_api.device_aggregates(
        device_id=device_id, who=viewer.principal, db=db, settings=settings, interval="30m", start=lo, end=hi,
        quantity=data.ACTIVE_IMPORT), device_id)
    step = int(HALF_HOUR.total_seconds())
    first = int(lo.timestamp())
    y: list[float | None] = [None] * (YEAR_DAYS * 48)
    for a in body.intervals:
        assert isinstance(a.start, datetime)  # 30m intervals start at UTC instants
        i = (int(a.start.timestamp()) - first) // step
        if 0 <= i < len(y) and a.energy is not None:
            y[i] = round(a.energy, 4)
    return {"kind": "year", "interval": "30m", "unit": body.unit, "total": body.total_energy or 0.0,
            "start": first, "step": step, "y": y, "values": sum(v is not None for v in y)}
