"""Routers of the monitoring API; every query lives in storage.postgres."""
from __future__ import annotations

import base64
import binascii
from datetime import datetime, timedelta, timezone
from typing import Annotated

import asyncpg
import orjson
from fastapi import APIRouter, HTTPException, Query

from meterray.domain import DeviceStatus, Quality
from meterray.quantities import QUANTITIES
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
from storage.postgres import devices as device_repo
from storage.postgres import readings as readings_repo

MAX_HISTORY_ROWS = 10_000
MAX_DEVICE_PAGE = 1000
_CURSOR_VERSION = 1

devices_router = APIRouter(prefix="/api/v1/devices", tags=["devices"])


@devices_router.get("", response_model=DevicePage)
async def list_devices(
    db: Db,
    limit: Annotated[int, Query(ge=1, le=MAX_DEVICE_PAGE, description="devices per page")] = 100,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page; omit for the first")] = None,
    status: Annotated[DeviceStatus | None, Query(description="only devices in this health status")] = None,
) -> DevicePage:
    """Devices in id order, a page at a time (keyset paging: stable while devices come and go),
    with their health; `status` keeps only the devices in that state."""
    after = _decode_cursor(cursor) if cursor else None
    rows = await device_repo.list_devices(db, after, limit + 1, None if status is None else status.value)
    page = [DeviceOut(**{**dict(r), "reasons": list(r["reasons"])}) for r in rows[:limit]]
    return DevicePage(devices=page, next_cursor=_encode_cursor(page[-1].id) if len(rows) > limit else None)


def _encode_cursor(last_id: str) -> str:
    # Opaque to clients: versioned JSON, base64url without padding.
    return base64.urlsafe_b64encode(orjson.dumps({"v": _CURSOR_VERSION, "after": last_id})).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = orjson.loads(raw)
        if isinstance(data, dict) and data.get("v") == _CURSOR_VERSION and isinstance(data.get("after"), str):
            return str(data["after"])
    except (binascii.Error, ValueError):
        pass
    raise HTTPException(422, "invalid cursor: pass the `next_cursor` of the previous page unchanged, "
                             "or omit `cursor` for the first page")


@devices_router.get("/{device_id}/health", response_model=DeviceHealth)
async def device_health(device_id: str, db: Db) -> DeviceHealth:
    """The device's health as its device processor last stored it, and its latest transitions."""
    await _require_device(db, device_id)
    row, transitions = await device_repo.device_health(db, device_id)
    history = [Transition(ts=t["ts"], status=t["status"], previous=t["previous"], reasons=list(t["reasons"]),
                          reason=t["reason"]) for t in transitions]
    if row is None:  # registered, nothing processed yet
        return DeviceHealth(device_id=device_id, status="unknown", reasons=[], link="unknown", data="unknown",
                            last_seen=None, last_success=None, consecutive_failures=0, error_ratio=0.0,
                            clock_offset_s=None, updated_at=None, transitions=history)
    return DeviceHealth(device_id=device_id, **{**dict(row), "reasons": list(row["reasons"])}, transitions=history)


health_router = APIRouter(prefix="/api/v1/health", tags=["health"])


@health_router.get("/summary", response_model=HealthSummary)
async def health_summary(db: Db) -> HealthSummary:
    """The fleet at a glance: registered devices per health status and per active reason."""
    by_status, by_reason = await device_repo.health_summary(db)
    counts = {s.value: by_status.get(s.value, 0) for s in DeviceStatus}
    return HealthSummary(devices=sum(by_status.values()), by_status=counts, by_reason=by_reason)


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
                      unit=r["unit"], quality=r["quality"], quality_flags=quality_flags(r["quality"]))


def quality_flags(mask: int) -> list[str]:
    """The names of the Quality flags set in `mask`, in bit order; a bit no flag names shows as BIT_<n>."""
    names = [flag.name for flag in Quality if flag.value and mask & flag.value and flag.name]
    unnamed = mask & ~sum(flag.value for flag in Quality)
    return names + [f"BIT_{n}" for n in range(unnamed.bit_length()) if unnamed >> n & 1]


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt
