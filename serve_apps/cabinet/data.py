"""What the cabinet's pages show, read through the monitoring and users APIs' own functions (in-process: the
cabinet runs in the monitoring replica), each with the API's own rule of who may read a device
(meterray.access through `scope_of`): another organisation's device answers the API's 404, which is the
cabinet's NotVisible, the same as a device that does not exist."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import asyncpg
from fastapi import HTTPException

from meterray.access import Action, Scope
from meterray.intervals import Size
from meterray.settings import Settings
from serve_apps.auth import scope_of
from serve_apps.cabinet.session import Viewer
from serve_apps.monitoring import consumption as consumption_api
from serve_apps.monitoring import routes as monitoring_api
from serve_apps.monitoring.schemas import ConsumptionOut, CurrentReadings, DeviceHealth, EnergyOut, ReadingHistory
from storage.postgres import cabinet as repo
from storage.postgres import devices

ACTIVE_IMPORT = "1-0:1.8.0"
# How far back each interval's chart reaches (the consumption API serves at most 93 days a request).
CONSUMPTION_RANGE = {Size.HALF_HOUR: timedelta(days=1), Size.HOUR: timedelta(days=3), Size.DAY: timedelta(days=31),
                     Size.MONTH: timedelta(days=93)}
ARCHIVE_RANGE = {"1d": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30)}
ARCHIVE_POINTS = 10_000  # the archive API's most per request
# The dashboard's totals are derived per meter from the archive (no stored roll-up yet): bounded.
DASHBOARD_METERS = 25


T = TypeVar("T")


class NotVisible(Exception):
    """The device does not exist, or belongs to another organisation: the same answer for both."""


@dataclass(frozen=True)
class Totals:
    today: float
    month: float
    unit: str
    meters: int  # how many were summed
    metered: int  # of how many with an energy register (capped at DASHBOARD_METERS + 1)


async def device(db: asyncpg.Pool, viewer: Viewer, device_id: str) -> asyncpg.Record:
    row = await devices.get_device(db, device_id, organisation_id=_reads(viewer).organisation_id)
    if row is None:
        raise NotVisible(device_id)
    return row


async def visible(answer: Awaitable[T], device_id: str) -> T:
    """An API function's answer about a device, its 404 (absent, or not the viewer's) as NotVisible."""
    try:
        return await answer
    except HTTPException as err:
        if err.status_code == 404:
            raise NotVisible(device_id) from None
        raise


def _reads(viewer: Viewer) -> Scope:
    # The API's own rule (meterray.access) for what this viewer may read, passed to the API's functions.
    return scope_of(viewer.principal, Action.READ_DEVICES)


async def current(db: asyncpg.Pool, viewer: Viewer, device_id: str) -> CurrentReadings:
    return await visible(monitoring_api.current_readings(device_id=device_id, db=db, scope=_reads(viewer)), device_id)


async def health(db: asyncpg.Pool, viewer: Viewer, device_id: str) -> DeviceHealth:
    return await visible(monitoring_api.device_health(device_id=device_id, db=db, scope=_reads(viewer)), device_id)


async def consumption(db: asyncpg.Pool, settings: Settings, viewer: Viewer, device_id: str, size: Size,
                      quantity: str = ACTIVE_IMPORT) -> ConsumptionOut:
    end = datetime.now(timezone.utc)
    return await visible(consumption_api.consumption(
        device_id=device_id, db=db, settings=settings, scope=_reads(viewer), start=end - CONSUMPTION_RANGE[size],
        end=end, interval=size, quantity=quantity), device_id)


async def archive(db: asyncpg.Pool, viewer: Viewer, device_id: str, quantity: str, period: str) -> ReadingHistory:
    end = datetime.now(timezone.utc)
    return await visible(monitoring_api.reading_history(
        device_id=device_id, db=db, scope=_reads(viewer), quantity=quantity, start=end - ARCHIVE_RANGE[period],
        end=end, limit=ARCHIVE_POINTS), device_id)


async def totals(db: asyncpg.Pool, settings: Settings, viewer: Viewer, month_start: datetime) -> Totals | None:
    """The organisation's active energy today and this month (each meter's own local day), over its first
    DASHBOARD_METERS meters with an energy register."""
    ids = await repo.metered_ids(db, viewer.principal.organisation_id, viewer.everything, ACTIVE_IMPORT,
                                 DASHBOARD_METERS + 1)
    if not ids:
        return None
    now = datetime.now(timezone.utc)
    start = min(month_start, now - timedelta(minutes=1))

    async def one(device_id: str) -> ConsumptionOut | None:
        try:
            return await consumption_api.consumption(device_id=device_id, db=db, settings=settings,
                                                     scope=_reads(viewer), start=start,
                                                     end=now, interval=Size.DAY, quantity=ACTIVE_IMPORT)
        except HTTPException:  # e.g. a time zone the tz database lost: that meter is left out
            return None

    results = [r for r in await asyncio.gather(*(one(i) for i in ids[:DASHBOARD_METERS])) if r is not None]
    today = sum((r.intervals[-1].energy or 0.0) for r in results if r.intervals and r.intervals[-1].end > now)
    return Totals(today=today, month=sum(r.total for r in results), unit=results[0].unit if results else "kWh",
                  meters=len(results), metered=len(ids))


def since_first_data(body: ConsumptionOut) -> list[EnergyOut]:
    """The intervals from the first one with energy on: before a meter's first reading there is nothing to
    show but a row of 'missing' (a meter registered a week ago, a chart of 93 days)."""
    first = next((i for i, e in enumerate(body.intervals) if e.status != "missing"), len(body.intervals))
    return body.intervals[first:]


def chart_series(body: ConsumptionOut | ReadingHistory) -> dict[str, Any]:
    """Columns for uPlot: x in epoch seconds, y (None where missing), and per point its status/flags."""
    if isinstance(body, ConsumptionOut):
        shown = since_first_data(body)
        return {"kind": "consumption", "interval": body.interval, "unit": body.unit, "timezone": body.timezone,
                "total": body.total, "x": [e.start.timestamp() for e in shown], "y": [e.energy for e in shown],
                "status": [e.status for e in shown]}
    unit = body.readings[0].unit if body.readings else ""
    return {"kind": "archive", "quantity": body.quantity, "unit": unit, "truncated": body.truncated,
            "x": [r.ts.timestamp() for r in body.readings], "y": [r.value for r in body.readings],
            "flags": [r.quality_flags for r in body.readings]}
