"""The consumption queries against the real PostgreSQL: the server-side thinning keeps exactly what
meterray.consumption.thin keeps, and device time zones are checked by the database too."""
from __future__ import annotations

import random
from datetime import date, timedelta

import asyncpg
import pytest

from meterray.consumption import CounterReading, derive, max_gap_ms, thin
from meterray.domain import Quality
from meterray.intervals import half_hours, local_midnight_ms, zone
from meterray.settings import Settings, SettingsError
from storage.postgres import consumption
from storage.postgres.readings import ReadingsWriter
from tests.storage.archive_rows import row

ENERGY = "1-0:1.8.0"
MIN = 60_000


def _series(start: int, rnd: random.Random) -> list[CounterReading]:
    """Three days at ~1-minute cadence with jitter: some gaps, a replacement, noise, flagged readings."""
    out, t, v = [], start - 7 * MIN, 5000.0
    while t < start + 3 * 24 * 60 * MIN:
        r = rnd.random()
        t += rnd.randint(40_000, 80_000) if r > 0.002 else rnd.randint(20 * MIN, 6 * 60 * MIN)  # a gap
        if r < 0.001:
            v = rnd.uniform(0, 5)  # a new meter
        elif r < 0.003:
            v -= 0.01  # noise
        else:
            v += rnd.uniform(0, 0.2)
        out.append(CounterReading(t, v, int(Quality.FUTURE_TIMESTAMP) if r > 0.998 else 0))
    return out


async def test_server_side_thinning_keeps_what_the_derivation_needs(database: Settings) -> None:
    tz = zone("Asia/Yekaterinburg")
    day = date(2026, 5, 4)
    start = local_midnight_ms(day, tz)
    slots = half_hours(start, local_midnight_ms(day + timedelta(days=3), tz), tz)
    readings = _series(start, random.Random(7))
    gap = max_gap_ms(60)
    conn = await asyncpg.connect(database.pg_dsn)
    try:
        await ReadingsWriter().write(conn, [row("thin-1", ENERGY, consumption.from_ms(r.ts_ms), r.value,
                                                quality=r.quality) for r in readings])
        await ReadingsWriter().write(conn, [row("thin-2", ENERGY, consumption.from_ms(r.ts_ms), r.value)
                                            for r in readings[:10]])  # another device: not read
        boundaries = [s.start_ms for s in slots] + [slots[-1].end_ms]
        got = await consumption.counter_readings(conn, "thin-1", ENERGY, boundaries, gap)
        stored = await consumption.all_counter_readings(conn, "thin-1", ENERGY, readings[0].ts_ms,
                                                        readings[-1].ts_ms)
    finally:
        await conn.close()
    assert [r.ts_ms for r in stored] == [r.ts_ms for r in readings]  # exact milliseconds both ways
    # The range reaches one reading past each end of the slots, and keeps the same readings as thin().
    around = [r for r in readings if r.ts_ms >= max(x.ts_ms for x in readings if x.ts_ms < start)
              and r.ts_ms <= min(x.ts_ms for x in readings if x.ts_ms >= slots[-1].end_ms)]
    assert got == thin(around, slots, gap)
    assert len(got) < len(readings) / 5  # about 2 per half-hour instead of ~45
    want = derive(readings, slots, max_gap=gap, now_ms=10**15)
    again = derive(got, slots, max_gap=gap, now_ms=10**15)
    assert [(e.status, e.quality) for e in again.intervals] == [(e.status, e.quality) for e in want.intervals]
    assert [e.energy for e in again.intervals] == pytest.approx([e.energy for e in want.intervals])
    assert want.gaps and want.drops  # the series did hold gaps and drops


async def test_device_time_zones_are_iana_names(database: Settings) -> None:
    conn = await asyncpg.connect(database.pg_dsn)
    try:
        await conn.execute("INSERT INTO devices.devices (id, name, protocol, profile, unit_id)"
                           " VALUES ('tz-1', 'tz-1', 'modbus_tcp', 'sdm630', 1) ON CONFLICT DO NOTHING")
        assert await consumption.set_device_timezone(conn, "tz-1", "Asia/Vladivostok")
        assert (await consumption.metering(conn, "tz-1", organisation_id=None)).timezone == "Asia/Vladivostok"  # type: ignore[union-attr]
        assert not await consumption.set_device_timezone(conn, "no-such-device", "Europe/Moscow")
        with pytest.raises(asyncpg.CheckViolationError, match="unknown time zone 'Mars/Olympus'"):
            await consumption.set_device_timezone(conn, "tz-1", "Mars/Olympus")
        with pytest.raises(asyncpg.CheckViolationError):
            await consumption.set_backfill_window(conn, "tz-1", timedelta(0))
        assert await consumption.set_backfill_window(conn, "tz-1", timedelta(days=30))
        assert "tz-1" in [m.device_id for m in await consumption.metered_devices(conn)]
        assert await consumption.set_device_timezone(conn, "tz-1", None)  # back to the default setting
        assert (await consumption.metering(conn, "tz-1", organisation_id=None)).timezone is None  # type: ignore[union-attr]
    finally:
        await conn.execute("DELETE FROM devices.devices WHERE id = 'tz-1'")
        await conn.close()


def test_default_time_zone_setting_is_checked() -> None:
    assert Settings.from_env({}).default_timezone == "Europe/Moscow"
    assert Settings.from_env({"METERRAY_DEFAULT_TIMEZONE": "Asia/Kamchatka"}).default_timezone == "Asia/Kamchatka"
    with pytest.raises(SettingsError, match="METERRAY_DEFAULT_TIMEZONE: .*unknown time zone 'Moscow'"):
        Settings.from_env({"METERRAY_DEFAULT_TIMEZONE": "Moscow"})
