"""Queries for interval consumption: a device's metering facts, and its counter readings thinned on
the server to the ones the derivation needs (meterray.consumption.thin does the same in Python)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from uuid import UUID

import asyncpg

from meterray.consumption import (
    LIKE_DAY_WEEKS,
    LINEAR_MAX_INTERVALS,
    Consumption,
    CounterReading,
    Method,
    derive,
    max_gap_ms,
)
from meterray.intervals import HALF_HOUR_MS, Slot, half_hours, local_date, local_midnight_ms, zone

# A device that is not polled (no connection) and has no cadence of its own is expected to report
# at least every half-hour: a source that reports less often cannot give half-hour energy.
DEFAULT_CADENCE_S = HALF_HOUR_MS / 1000
RUN_MARGIN_MS = 7 * 24 * 3600 * 1000  # how far past the range a gap's run is followed
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


def to_ms(dt: datetime) -> int:
    """Exact epoch milliseconds (float seconds × 1000 can land one millisecond short)."""
    return (dt - _EPOCH) // _MS


def from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


@dataclass(frozen=True, slots=True)
class Metering:
    """What the derivation needs to know about a device."""

    device_id: str
    protocol: str
    profile: str
    timezone: str | None  # None: the default time zone setting
    poll_interval_s: float | None  # the connection's cadence; None: the device is not polled
    backfill_window: timedelta | None  # how far back its source can resend readings; None: it cannot


async def metering(conn: asyncpg.Connection | asyncpg.Pool, device_id: str, *,
                   organisation_id: UUID | None) -> Metering | None:
    """None also for a device of another organisation than `organisation_id` (None: any)."""
    row = await conn.fetchrow(
        """
        SELECT d.id, d.protocol, d.profile, d.timezone, c.poll_interval_s, d.backfill_window
        FROM devices.devices d LEFT JOIN devices.connections c ON c.id = d.connection_id
        WHERE d.id = $1 AND ($2::uuid IS NULL OR d.organisation_id = $2)
        """,
        device_id, organisation_id,
    )
    return None if row is None else Metering(*row.values())


async def metered_devices(conn: asyncpg.Connection | asyncpg.Pool) -> list[Metering]:
    """Devices whose source can resend readings (a backfill window), in id order."""
    rows = await conn.fetch(
        """
        SELECT d.id, d.protocol, d.profile, d.timezone, c.poll_interval_s, d.backfill_window
        FROM devices.devices d LEFT JOIN devices.connections c ON c.id = d.connection_id
        WHERE d.backfill_window IS NOT NULL ORDER BY d.id
        """
    )
    return [Metering(*r.values()) for r in rows]


async def set_device_timezone(conn: asyncpg.Connection | asyncpg.Pool, device_id: str, tz: str | None) -> bool:
    """Set (or with None clear) a device's time zone; False if there is no such device. The caller checks
    the name (meterray.intervals.zone); the database refuses an unknown one as well."""
    return await conn.fetchval("UPDATE devices.devices SET timezone = $2 WHERE id = $1 RETURNING true",
                               device_id, tz) is not None


async def set_backfill_window(conn: asyncpg.Connection | asyncpg.Pool, device_id: str,
                              window: timedelta | None) -> bool:
    return await conn.fetchval("UPDATE devices.devices SET backfill_window = $2 WHERE id = $1 RETURNING true",
                               device_id, window) is not None


# Every reading in range gets its neighbours (one window pass over the device's key range, read in
# primary-key order); kept are the first and last of each half-hour (a neighbour in another
# width_bucket of the boundaries; cheap checks first, so most rows never search the array), both
# sides of each drop and each gap, and every flagged reading. The range reaches one reading past
# each end, so the outer boundaries can be interpolated.
_THINNED = """
WITH span AS (
    SELECT coalesce((SELECT max(ts) FROM monitoring.readings
                     WHERE device_id = $1 AND quantity = $2 AND ts < $3), $3) AS lo,
           coalesce((SELECT min(ts) FROM monitoring.readings
                     WHERE device_id = $1 AND quantity = $2 AND ts >= $4), $4) AS hi
), r AS (
    SELECT ts, value, quality,
           lag(ts) OVER w AS prev_ts, lead(ts) OVER w AS next_ts,
           lag(value) OVER w AS prev_value, lead(value) OVER w AS next_value
    FROM monitoring.readings, span
    WHERE device_id = $1 AND quantity = $2 AND ts >= span.lo AND ts <= span.hi
    WINDOW w AS (ORDER BY ts)
)
SELECT ts, value, quality, coalesce(ts - prev_ts > $6, false) AS after_gap FROM r
WHERE prev_ts IS NULL OR next_ts IS NULL OR quality <> 0
   OR value < prev_value OR next_value < value OR ts - prev_ts > $6 OR next_ts - ts > $6
   OR width_bucket(prev_ts, $5::timestamptz[]) <> width_bucket(ts, $5::timestamptz[])
   OR width_bucket(next_ts, $5::timestamptz[]) <> width_bucket(ts, $5::timestamptz[])
ORDER BY ts
"""


async def counter_readings(conn: asyncpg.Connection | asyncpg.Pool, device_id: str, quantity: str,
                           boundaries_ms: Sequence[int], max_gap_ms: int) -> list[CounterReading]:
    """The readings of a cumulative quantity that decide the half-hours between `boundaries_ms` (the
    slot starts and the last slot's end), each saying whether a gap (longer than `max_gap_ms`, judged
    over every stored reading) preceded it. The archive holds each key once, so a reading delivered
    twice is here once."""
    if len(boundaries_ms) < 2:
        return []
    bounds = [from_ms(b) for b in boundaries_ms]
    rows = await conn.fetch(_THINNED, device_id, quantity, bounds[0], bounds[-1], bounds,
                            timedelta(milliseconds=max_gap_ms))
    return [CounterReading(to_ms(r["ts"]), r["value"], r["quality"], r["after_gap"]) for r in rows]


async def all_counter_readings(conn: asyncpg.Connection | asyncpg.Pool, device_id: str, quantity: str,
                               start_ms: int, end_ms: int) -> list[CounterReading]:
    """Every stored reading in [start, end], unthinned (for checks and small ranges)."""
    rows = await conn.fetch("SELECT ts, value, quality FROM monitoring.readings WHERE device_id = $1"
                            " AND quantity = $2 AND ts >= $3 AND ts <= $4 ORDER BY ts",
                            device_id, quantity, from_ms(start_ms), from_ms(end_ms))
    return [CounterReading(to_ms(r["ts"]), r["value"], r["quality"]) for r in rows]


async def device_consumption(conn: asyncpg.Connection | asyncpg.Pool, device: Metering, quantity: str, tz: str,
                             start_ms: int, end_ms: int, now_ms: int, modulus: float | None
                             ) -> tuple[list[Slot], Consumption]:
    """The half-hours of `device` in zone `tz` that overlap [start_ms, end_ms) and began before now,
    derived from the archive (meterray.consumption.derive); `modulus`: the register's wrap value
    (from its profile). Returns the slots and their consumption (gaps and drops of the range read).

    Estimates must not depend on the range asked for: a gap too long for linear interpolation needs
    like-day history, and a gap crossing either end of the range belongs to a run that goes on beyond
    it. Then the range is derived again with the LIKE_DAY_WEEKS weeks before it and up to
    RUN_MARGIN after it (a 1-second meter's month is 2.6 million rows: not read when not needed)."""
    z = zone(tz)
    max_gap = max_gap_ms(device.poll_interval_s or DEFAULT_CADENCE_S)
    slots = [s for s in half_hours(start_ms, end_ms, z) if s.start_ms < now_ms]
    if not slots:
        return [], Consumption((), (), ())
    derived = await _derive(conn, device.device_id, quantity, slots, max_gap, now_ms, modulus)
    lo, hi = slots[0].start_ms, slots[-1].end_ms
    if all(g.intervals <= LINEAR_MAX_INTERVALS and g.method is Method.LINEAR and lo < g.start_ms and g.end_ms < hi
           for g in derived.gaps):
        return slots, derived
    history_ms = local_midnight_ms(local_date(start_ms, z) - timedelta(weeks=LIKE_DAY_WEEKS), z)
    wider = [s for s in half_hours(history_ms, min(now_ms, end_ms + RUN_MARGIN_MS), z) if s.start_ms < now_ms]
    derived = await _derive(conn, device.device_id, quantity, wider, max_gap, now_ms, modulus)
    first = next(i for i, s in enumerate(wider) if s.start_ms == lo)
    return slots, Consumption(derived.intervals[first:first + len(slots)],
                              tuple(g for g in derived.gaps if g.end_ms > lo and g.start_ms < hi), derived.drops)


async def _derive(conn: asyncpg.Connection | asyncpg.Pool, device_id: str, quantity: str, slots: list[Slot],
                  max_gap: int, now_ms: int, modulus: float | None) -> Consumption:
    readings = await counter_readings(conn, device_id, quantity, [s.start_ms for s in slots] + [slots[-1].end_ms],
                                      max_gap)
    return derive(readings, slots, max_gap=max_gap, now_ms=now_ms, modulus=modulus)
