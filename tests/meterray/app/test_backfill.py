"""`meterray backfill` against the real PostgreSQL and Kafka: a gap a source can still resend becomes
one request on `backfill-requests`; a gap older than the source's window, or in a Modbus meter that
keeps no archive (even with a window set on it by mistake), does not."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import asyncpg

from meterray.app.backfill import request_backfill
from meterray.settings import Settings
from storage.kafka import backfill, topics
from storage.postgres.readings import ReadingsWriter
from tests.pipeline.helpers import read_topic, sql
from tests.storage.archive_rows import row

ENERGY = "1-0:1.8.0"
NOW = datetime(2026, 9, 1, tzinfo=timezone.utc)


def _readings(device: str, holes: list[tuple[datetime, datetime]]) -> list:
    """Every 10 minutes from 20 August to NOW, 0.5 kWh each, except inside `holes`."""
    out, t, v = [], datetime(2026, 8, 20, tzinfo=timezone.utc), 100.0
    while t <= NOW:
        if not any(a < t < b for a, b in holes):
            out.append(row(device, ENERGY, t, v))
        t += timedelta(minutes=10)
        v += 0.5
    return out


def test_gaps_within_a_sources_window_are_requested_once_per_gap(stores: Settings) -> None:
    old_hole = (datetime(2026, 8, 22, 3, tzinfo=timezone.utc), datetime(2026, 8, 22, 7, tzinfo=timezone.utc))
    new_hole = (datetime(2026, 8, 29, 10, 5, tzinfo=timezone.utc), datetime(2026, 8, 29, 13, 5, tzinfo=timezone.utc))
    devices = (("bf-partner", "partner_http", "7 days"), ("bf-modbus", "modbus_tcp", None),
               ("bf-modbus-window", "modbus_tcp", "7 days"))
    for device, protocol, window in devices:
        sql(stores.pg_dsn, "INSERT INTO devices.devices (id, name, protocol, profile, unit_id, backfill_window)"
                           " VALUES ($1, $1, $2, 'sdm630', 1, $3::text::interval) ON CONFLICT DO NOTHING",
            device, protocol, window)

    async def write() -> None:
        conn = await asyncpg.connect(stores.pg_dsn)
        try:
            for device, _, _ in devices:
                await ReadingsWriter().write(conn, _readings(device, [old_hole, new_hole]))
        finally:
            await conn.close()

    asyncio.run(write())
    published = asyncio.run(request_backfill(stores, NOW))
    records = [(k, backfill.decode(v)) for k, v in read_topic(stores.kafka_bootstrap,
                                                                stores.topic(topics.BACKFILL_REQUESTS))]
    assert [r for _, r in records] == published
    records = [(k, r) for k, r in records if k.startswith(b"bf-")]  # devices of other tests aside
    # Only the partner device (a Modbus register cannot be read for the past, window or not), only the gap
    # within its 7 days: the readings at 10:00 and 13:10 UTC are
    # 190 minutes apart (a gap: over 90 minutes for a device expected each half-hour), so the half-hours
    # 10:00..13:30 have no measured energy; meanwhile they are estimated from the Saturday before.
    assert [(k, r.device_id, r.protocol, r.start, r.end, r.half_hours, r.estimated_by) for k, r in records] == [
        (b"bf-partner", "bf-partner", "partner_http", "2026-08-29T10:00:00+00:00", "2026-08-29T13:30:00+00:00",
         7, "like_day")]
    # A second scan asks again (at least once, until the source has filled it); the source dedupes.
    assert asyncio.run(request_backfill(stores, NOW)) == published
    assert sql(stores.pg_dsn, "SELECT count(*) AS n FROM monitoring.readings WHERE device_id LIKE 'bf-%'")[0]["n"] \
        == 3 * len(_readings("x", [old_hole, new_hole]))  # asking wrote nothing
