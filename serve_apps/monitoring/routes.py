"""Routers of the monitoring API; every query lives in storage.postgres.

Every route needs an access token and answers within the caller's scope for `devices:read`
(meterray.access): the scope's organisation goes into each query; another organisation's device is a 404.
"""
from __future__ import annotations

import functools
from datetime import datetime, timedelta, timezone
from typing import Annotated

import asyncpg
from fastapi import APIRouter, HTTPException, Query

from meterray.access import Scope
from meterray.domain import DeviceStatus, Quality
from meterray.quantities import QUANTITIES
from serve_apps.auth import DevicesScope
from serve_apps.deps import Db
from serve_apps.monitoring.schemas import (
    CurrentReadings,
    DeviceHealth,
    DeviceOut,
    DevicePage,
    HealthSummary,
    ReadingHistory,
    ReadingOut,
    Transition,
)
from serve_apps.paging import decode_cursor, encode_cursor
from storage.postgres import devices as device_repo
from storage.postgres import readings as readings_repo

MAX_HISTORY_ROWS = 10_000
MAX_DEVICE_PAGE = 1000

devices_router = APIRouter(prefix="/api/v1/devices", tags=["devices"])


@devices_router.get("", response_model=DevicePage)
async def list_devices(
    db: Db,
    scope: DevicesScope,
    limit: Annotated[int, Query(ge=1, le=MAX_DEVICE_PAGE, description="devices per page")] = 100,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page; omit for the first")] = None,
    status: Annotated[DeviceStatus | None, Query(description="only devices in this health status")] = None,
) -> DevicePage:
    """Devices in id order, a page at a time (keyset paging: stable while devices come and go),
    with their health; `status` keeps only the devices in that state."""
    after = decode_cursor(cursor) if cursor else None
    rows = await device_repo.list_devices(db, after, limit + 1, None if status is None else status.value,
                                          organisation_id=scope.organisation_id)
    page = [DeviceOut(**{**dict(r), "reasons": list(r["reasons"])}) for r in rows[:limit]]
    return DevicePage(devices=page, next_cursor=encode_cursor(page[-1].id) if len(rows) > limit else None)


@devices_router.get("/{device_id}/health", response_model=DeviceHealth)
async def device_health(device_id: str, db: Db, scope: DevicesScope) -> DeviceHealth:
    """The device's health as its device processor last stored it, and its latest transitions."""
    await _require_device(db, device_id, scope)
    row, transitions = await device_repo.device_health(db, device_id, organisation_id=scope.organisation_id)
    history = [Transition(ts=t["ts"], status=t["status"], previous=t["previous"], reasons=list(t["reasons"]),
                          reason=t["reason"]) for t in transitions]
    if row is None:  # registered, nothing processed yet
        return DeviceHealth(device_id=device_id, status="unknown", reasons=[], link="unknown", data="unknown",
                            last_seen=None, last_success=None, consecutive_failures=0, error_ratio=0.0,
                            clock_offset_s=None, updated_at=None, transitions=history)
    return DeviceHealth(device_id=device_id, **{**dict(row), "reasons": list(row["reasons"])}, transitions=history)


health_router = APIRouter(prefix="/api/v1/health", tags=["health"])


@health_router.get("/summary", response_model=HealthSummary)
async def health_summary(db: Db, scope: DevicesScope) -> HealthSummary:
    """The fleet at a glance (the caller's organisation's devices): per health status and per active reason."""
    by_status, by_reason = await device_repo.health_summary(db, organisation_id=scope.organisation_id)
    counts = {s.value: by_status.get(s.value, 0) for s in DeviceStatus}
    return HealthSummary(devices=sum(by_status.values()), by_status=counts, by_reason=by_reason)


@devices_router.get("/{device_id}/readings/current", response_model=CurrentReadings)
async def current_readings(device_id: str, db: Db, scope: DevicesScope) -> CurrentReadings:
    rows = await readings_repo.current_readings(db, device_id, organisation_id=scope.organisation_id)
    if rows is None:
        raise _no_device(device_id)
    return CurrentReadings(device_id=device_id, readings=[_reading(r) for r in rows])


@devices_router.get("/{device_id}/readings", response_model=ReadingHistory)
async def reading_history(
    device_id: str,
    db: Db,
    scope: DevicesScope,
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
    await _require_device(db, device_id, scope)
    rows = await readings_repo.reading_history(db, device_id, quantity, start, end, limit + 1,
                                               organisation_id=scope.organisation_id)
    return ReadingHistory(device_id=device_id, quantity=quantity, start=start, end=end,
                          readings=[_reading(r) for r in rows[:limit]], truncated=len(rows) > limit)


async def _require_device(db: asyncpg.Pool, device_id: str, scope: Scope) -> None:
    # Another organisation's device is as absent as a device that does not exist (no probing of ids).
    if await device_repo.get_device(db, device_id, organisation_id=scope.organisation_id) is None:
        raise _no_device(device_id)


def _no_device(device_id: str) -> HTTPException:
    return HTTPException(404, f"no device {device_id!r}")


def _reading(r: asyncpg.Record) -> ReadingOut:
    q = QUANTITIES.get(r["quantity"])
    return ReadingOut(quantity=r["quantity"], name=q.name if q else r["quantity"], ts=r["ts"], value=r["value"],
                      unit=r["unit"], quality=r["quality"], quality_flags=quality_flags(r["quality"]))


def quality_flags(mask: int) -> list[str]:
    """The names of the Quality flags set in `mask`, in bit order; a bit no flag names shows as BIT_<n>."""
    return list(_flag_names(mask))


@functools.lru_cache(maxsize=1024)  # a handful of masks occur; each reading of every answer asks
def _flag_names(mask: int) -> tuple[str, ...]:
    names = [flag.name for flag in Quality if flag.value and mask & flag.value and flag.name]
    unnamed = mask & ~sum(flag.value for flag in Quality)
    return (*names, *(f"BIT_{n}" for n in range(unnamed.bit_length()) if unnamed >> n & 1))


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt
