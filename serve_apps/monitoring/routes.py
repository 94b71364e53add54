"""Routers of the monitoring API; every query lives in storage.postgres."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated

import asyncpg
from fastapi import APIRouter, HTTPException, Query

from meterray.quantities import QUANTITIES
from serve_apps.deps import Db
from serve_apps.monitoring.schemas import CurrentReadings, DeviceOut, ReadingHistory, ReadingOut
from storage.postgres import devices as device_repo
from storage.postgres import readings as readings_repo

MAX_HISTORY_ROWS = 10_000

devices_router = APIRouter(prefix="/api/v1/devices", tags=["devices"])


@devices_router.get("", response_model=list[DeviceOut])
async def list_devices(db: Db) -> list[DeviceOut]:
    return [DeviceOut(**dict(r)) for r in await device_repo.list_devices(db)]


@devices_router.get("/{device_id}/readings/current", response_model=CurrentReadings)
async def current_readings(device_id: str, db: Db) -> CurrentReadings:
    await _require_device(db, device_id)
    rows = await readings_repo.current_readings(db, device_id)
    return CurrentReadings(device_id=device_id, readings=[_reading(r) for r in rows])


@devices_router.get("/{device_id}/readings", response_model=ReadingHistory)
async def reading_history(
    device_id: str,
    db: Db,
    quantity: Annotated[str | None, Query(description="OBIS code, e.g. 1-0:1.8.0; all quantities if omitted")] = None,
    start: Annotated[datetime | None, Query(alias="from", description="ISO 8601; default: 1 hour before `to`")] = None,
    end: Annotated[datetime | None, Query(alias="to", description="ISO 8601, exclusive; default: now")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_ROWS)] = 1000,
) -> ReadingHistory:
    if quantity is not None and quantity not in QUANTITIES:
        raise HTTPException(422, f"unknown quantity {quantity!r}; use an OBIS code such as 1-0:1.8.0")
    end = _utc(end) if end else datetime.now(timezone.utc)
    start = _utc(start) if start else end - timedelta(hours=1)
    if start >= end:
        raise HTTPException(422, "`from` must be earlier than `to`")
    await _require_device(db, device_id)
    rows = await readings_repo.reading_history(db, device_id, quantity, start, end, limit + 1)
    return ReadingHistory(device_id=device_id, quantity=quantity, start=start, end=end,
                          readings=[_reading(r) for r in rows[:limit]], truncated=len(rows) > limit)


async def _require_device(db: asyncpg.Pool, device_id: str) -> None:
    if await device_repo.get_device(db, device_id) is None:
        raise HTTPException(404, f"no device {device_id!r}")


def _reading(r: asyncpg.Record) -> ReadingOut:
    q = QUANTITIES.get(r["quantity"])
    return ReadingOut(quantity=r["quantity"], name=q.name if q else r["quantity"], ts=r["ts"], value=r["value"],
                      unit=r["unit"], quality=r["quality"])


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt
