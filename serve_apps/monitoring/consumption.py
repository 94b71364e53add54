"""`GET /api/v1/devices/{id}/consumption`: interval energy from the archive's counter readings.

Half-hours in the device's time zone from the pure derivation (meterray.consumption), over readings
the storage query thins on the server (storage.postgres.consumption.device_consumption); 1h/1d/1mo
are sums of those half-hours on the local calendar.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query

from meterray.consumption import IntervalEnergy, summed
from meterray.intervals import Size, TimezoneError, zone
from meterray.quantities import QUANTITIES
from protocols.modbus.profiles import wrap_value
from serve_apps.auth import DevicesScope
from serve_apps.deps import AppSettings, Db
from serve_apps.monitoring.routes import quality_flags
from serve_apps.monitoring.schemas import ConsumptionOut, CounterDropOut, EnergyOut, GapOut
from storage.postgres import consumption as repo

ACTIVE_IMPORT = "1-0:1.8.0"
MAX_RANGE = timedelta(days=93)  # a quarter: longer ranges want a stored roll-up, not the raw archive

consumption_router = APIRouter(prefix="/api/v1/devices", tags=["consumption"])


@consumption_router.get("/{device_id}/consumption", response_model=ConsumptionOut)
async def consumption(
    device_id: str,
    db: Db,
    settings: AppSettings,
    scope: DevicesScope,
    start: Annotated[datetime | None, Query(alias="from", description="ISO 8601; default: a day before `to`")] = None,
    end: Annotated[datetime | None, Query(alias="to", description="ISO 8601, exclusive; default: now")] = None,
    interval: Annotated[Size, Query(description="30m, 1h, 1d (local days) or 1mo (local months)")] = Size.HALF_HOUR,
    quantity: Annotated[str, Query(description="a cumulative register (OBIS), default active energy import")]
    = ACTIVE_IMPORT,
) -> ConsumptionOut:
    q = QUANTITIES.get(quantity)
    if q is None or not q.cumulative:
        raise HTTPException(422, f"{quantity!r} is not an energy register; use a cumulative OBIS code such as "
                                 f"{ACTIVE_IMPORT} ({', '.join(o for o, x in QUANTITIES.items() if x.cumulative)})")
    now = datetime.now(timezone.utc)
    end = _utc(end) if end else now
    start = _utc(start) if start else end - timedelta(days=1)
    if start >= end:
        raise HTTPException(422, "`from` must be earlier than `to`")
    if end - start > MAX_RANGE:
        raise HTTPException(422, f"at most {MAX_RANGE.days} days per request; ask for the rest in further requests")
    device = await repo.metering(db, device_id, organisation_id=scope.organisation_id)  # another org's: 404
    if device is None:
        raise HTTPException(404, f"no device {device_id!r}")
    tz_name = device.timezone or settings.default_timezone
    try:
        tz = zone(tz_name)
    except TimezoneError as err:  # stored before the check, or the tz database lost a name
        raise HTTPException(409, f"device {device_id!r}: {err}") from None
    now_ms, start_ms, end_ms = repo.to_ms(now), repo.to_ms(start), repo.to_ms(end)
    slots, derived = await repo.device_consumption(db, device, quantity, tz_name, start_ms, end_ms, now_ms,
                                                   wrap_value(device.profile, quantity))
    sums = summed(derived.intervals, slots, interval)
    first_ms = slots[0].start_ms if slots else start_ms
    last_ms = slots[-1].end_ms if slots else end_ms
    return ConsumptionOut(
        device_id=device_id, quantity=quantity, unit=q.unit, interval=interval.value, timezone=tz_name,
        start=_local(first_ms, tz), end=_local(last_ms, tz),
        total=sum(e.energy for e in sums if e.energy is not None),
        intervals=[_energy(e, tz) for e in sums],
        gaps=[GapOut(start=_local(g.start_ms, tz), end=_local(g.end_ms, tz), half_hours=g.intervals,
                     method=g.method) for g in derived.gaps],
        counter_drops=[CounterDropOut(ts=_local(ts, tz), kind=kind) for ts, kind in derived.drops
                       if start_ms <= ts < end_ms],
    )


def _energy(e: IntervalEnergy, tz: ZoneInfo) -> EnergyOut:
    return EnergyOut(start=_local(e.start_ms, tz), end=_local(e.end_ms, tz), energy=e.energy, status=e.status,
                     methods=list(e.methods), complete=e.complete, half_hours=e.intervals, quality=e.quality,
                     quality_flags=quality_flags(e.quality))


def _local(ms: int, tz: ZoneInfo) -> datetime:
    return repo.from_ms(ms).astimezone(tz)


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt
