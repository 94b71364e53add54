"""Long-range history from the ClickHouse analytics copy: interval energy and statistics per device and per
organisation (`GET /api/v1/devices/{id}/aggregates`, `GET /api/v1/organisations/{id}/aggregates`).

Recent data and current values stay with PostgreSQL (`/readings`, `/consumption`); these read the rollups
(storage/clickhouse). With embedded chDB only the ch-writer actor's process may open the data, so the
query is a Ray call to that actor (it runs storage.clickhouse.queries on its own read client); with a
ClickHouse server the actor runs the very same query against the server. Either way the API answers 503
while the writer or ClickHouse is away.

Scoped: a caller sees its own organisation's devices (platform staff, admin without an organisation, see
all); another organisation's device or organisation answers 404, as one that does not exist.
"""
from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta, timezone
from typing import Annotated, Any, Literal
from uuid import UUID

import ray
from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from meterray.identity import Principal, Role
from meterray.quantities import QUANTITIES
from serve_apps.auth import CurrentPrincipal
from serve_apps.deps import AppSettings, Db
from serve_apps.monitoring.routes import quality_flags
from storage.clickhouse.queries import TIME_INTERVALS, Aggregate
from storage.postgres.device_catalog import device_owner

CH_WRITER = "ch-writer-0"  # the actor answering the queries (actors/ch_writer.py NAME)
ACTIVE_IMPORT = "1-0:1.8.0"
MAX_INTERVALS = 20_000  # a year of half-hours is 17,520
QUERY_TIMEOUT_S = 30.0
DEFAULT_SPAN = {"30m": timedelta(days=1), "1h": timedelta(days=7), "1d": timedelta(days=366),
                "1mo": timedelta(days=3 * 366)}
_LENGTH = {"30m": timedelta(minutes=30), "1h": timedelta(hours=1), "1d": timedelta(days=1), "1mo": timedelta(days=28)}

_EARLIEST_ZONE = timezone(timedelta(hours=14))  # Kiribati's Line Islands: the first to start a calendar day

Interval = Literal["30m", "1h", "1d", "1mo"]

aggregates_router = APIRouter(prefix="/api/v1", tags=["aggregates"])


class AggregateOut(BaseModel):
    start: datetime | date = Field(description="UTC start (30m, 1h) or the local calendar date (1d, 1mo)")
    energy: float | None = Field(description="rise of the register over the interval (summed over devices); "
                                             "null for a quantity that is not a register or when it went down")
    readings: int = Field(description="readings behind it (each counted once, however often delivered)")
    devices: int
    counter_drops: int = Field(description="devices whose register went down in it (replaced or reset meter)")
    quality_flags: list[str]
    min: float | None = Field(None, description="smallest reading (one device only)")
    max: float | None = Field(None, description="largest reading (one device only)")
    last: float | None = Field(None, description="the last reading: the register at the end (one device only)")


class AggregatesOut(BaseModel):
    device_id: str | None = None
    organisation_id: UUID | None = None
    quantity: str
    unit: str
    interval: str
    start: datetime | date
    end: datetime | date
    total_energy: float | None
    intervals: list[AggregateOut]


@aggregates_router.get("/devices/{device_id}/aggregates", response_model=AggregatesOut)
async def device_aggregates(
    device_id: str, who: CurrentPrincipal, db: Db, settings: AppSettings,
    interval: Annotated[Interval, Query(description="30m, 1h (UTC), 1d, 1mo (the device's local calendar)")] = "1d",
    start: Annotated[datetime | None, Query(alias="from", description="ISO 8601; for 1d/1mo its date")] = None,
    end: Annotated[datetime | None, Query(alias="to", description="ISO 8601, exclusive; default now")] = None,
    quantity: Annotated[str, Query(description="an OBIS code; energy for cumulative registers")] = ACTIVE_IMPORT,
) -> AggregatesOut:
    known, owner = await device_owner(db, device_id)
    if not known or not _sees(who, owner):
        raise HTTPException(404, f"no device {device_id!r}")
    lo, hi = _range(interval, start, end)
    rows = await _query(settings.ray_namespace, quantity, interval, lo, hi, device_id=device_id)
    return _out(rows, quantity, interval, lo, hi, device_id=device_id)


@aggregates_router.get("/organisations/{organisation_id}/aggregates", response_model=AggregatesOut)
async def organisation_aggregates(
    organisation_id: UUID, who: CurrentPrincipal, settings: AppSettings,
    interval: Annotated[Interval, Query(description="30m, 1h (UTC), 1d, 1mo (each device's local calendar)")]
    = "1d",
    start: Annotated[datetime | None, Query(alias="from", description="ISO 8601; for 1d/1mo its date")] = None,
    end: Annotated[datetime | None, Query(alias="to", description="ISO 8601, exclusive; default now")] = None,
    quantity: Annotated[str, Query(description="an OBIS code; energy for cumulative registers")] = ACTIVE_IMPORT,
) -> AggregatesOut:
    if not _sees(who, organisation_id):
        raise HTTPException(404, f"no organisation {organisation_id}")
    lo, hi = _range(interval, start, end)
    rows = await _query(settings.ray_namespace, quantity, interval, lo, hi, organisation_id=organisation_id)
    return _out(rows, quantity, interval, lo, hi, organisation_id=organisation_id)


def _sees(who: Principal, owner: UUID | None) -> bool:
    staff = who.role is Role.ADMIN and who.organisation_id is None
    return staff or (owner is not None and owner == who.organisation_id)


def _range(interval: str, start: datetime | None, end: datetime | None,
           now: datetime | None = None) -> tuple[datetime | date, datetime | date]:
    now = now or datetime.now(timezone.utc)
    hi = _utc(end) if end else now
    lo = _utc(start) if start else hi - DEFAULT_SPAN[interval]
    if lo >= hi:
        raise HTTPException(422, "`from` must be earlier than `to`")
    if (hi - lo) / _LENGTH[interval] > MAX_INTERVALS:
        raise HTTPException(422, f"at most {MAX_INTERVALS} intervals per request: a longer interval or a "
                                 "shorter range")
    if interval in TIME_INTERVALS:
        return lo, hi
    # Calendar dates as the caller wrote them (in their own offset): the day (month) holding `from` up to the
    # one holding the last instant before `to`. The default `to` (now) includes today in every device's
    # calendar: the date now at the earliest offset (UTC+14), not the UTC date, which in Moscow from 21:00
    # UTC is still yesterday.
    lo_d = lo.date()
    if end is None:
        hi_d = now.astimezone(_EARLIEST_ZONE).date() + timedelta(days=1)
    else:
        hi_d = hi.date() if hi.timetz().replace(tzinfo=None) == datetime.min.time() else hi.date() + timedelta(days=1)
    if interval == "1mo":
        lo_d = lo_d.replace(day=1)
        if hi_d.day != 1:
            hi_d = (hi_d.replace(day=1) + timedelta(days=32)).replace(day=1)
    return lo_d, hi_d


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt


async def _query(namespace: str, quantity: str, interval: str, lo: datetime | date, hi: datetime | date,
                 device_id: str | None = None, organisation_id: UUID | None = None) -> list[Aggregate]:
    if quantity not in QUANTITIES:
        raise HTTPException(422, f"unknown quantity {quantity!r}; an OBIS code such as {ACTIVE_IMPORT}")
    try:
        writer = ray.get_actor(CH_WRITER, namespace=namespace)
    except ValueError:
        raise HTTPException(503, "the ClickHouse writer is not running (is the ingestion runtime up, "
                                 "METERRAY_CH_WRITERS ≥ 1?)") from None
    try:
        call: Any = writer.aggregates.remote(quantity, interval, lo, hi, device_id, organisation_id)
        result: list[Aggregate] = await asyncio.wait_for(call, QUERY_TIMEOUT_S)
        return result
    except (ray.exceptions.RayError, asyncio.TimeoutError) as err:
        cause = getattr(err, "cause", None) or err
        raise HTTPException(503, f"ClickHouse did not answer: {str(cause).splitlines()[0][:300]}") from None


def _out(rows: list[Aggregate], quantity: str, interval: str, lo: datetime | date, hi: datetime | date,
         device_id: str | None = None, organisation_id: UUID | None = None) -> AggregatesOut:
    q = QUANTITIES[quantity]
    one = device_id is not None
    intervals = [AggregateOut(start=a.start, energy=a.energy if q.cumulative else None, readings=a.readings,
                              devices=a.devices, counter_drops=a.counter_drops, quality_flags=quality_flags(a.quality),
                              min=a.min_value if one else None, max=a.max_value if one else None,
                              last=a.last_value if one else None) for a in rows]
    total = sum(a.energy for a in intervals if a.energy is not None) if q.cumulative else None
    return AggregatesOut(device_id=device_id, organisation_id=organisation_id, quantity=quantity, unit=q.unit,
                         interval=interval, start=lo, end=hi, total_energy=total, intervals=intervals)
