"""`GET /api/v1/devices/{id}/consumption` over the real Serve app and PostgreSQL, with readings written
straight through the archive writer: a rollover, a replacement, gaps, duplicates and late readings,
local time zones with and without daylight saving."""
from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from protocols.modbus.profiles import PROFILES
from storage.postgres.readings import ReadingsWriter
from tests.pipeline.helpers import http, platform_admin, sql
from tests.storage.archive_rows import row

ENERGY = "1-0:1.8.0"
MIN = timedelta(minutes=1)


def _device(dsn: str, device_id: str, profile: str = "sdm630", tz: str | None = None) -> None:
    # A meter polled every 5 minutes (so a gap is a stretch of more than 15 minutes without readings)
    # on a disabled connection: nobody polls it here, its readings are only the ones written.
    sql(dsn, "INSERT INTO devices.connections (id, protocol, host, port, poll_interval_s, timeout_s, enabled)"
             " VALUES ($1, 'modbus_tcp', '192.0.2.1', 502, 300, 1, false) ON CONFLICT DO NOTHING", f"c-{device_id}")
    sql(dsn, "INSERT INTO devices.devices (id, name, protocol, profile, connection_id, unit_id, timezone)"
             " VALUES ($1, $1, 'modbus_tcp', $2, $3, 1, $4)"
             " ON CONFLICT (id) DO UPDATE SET timezone = excluded.timezone",
        device_id, profile, f"c-{device_id}", tz)


def _write(dsn: str, device_id: str, points: list[tuple[datetime, float]]) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await ReadingsWriter().write(conn, [row(device_id, ENERGY, ts, v) for ts, v in points])
        finally:
            await conn.close()

    asyncio.run(run())


def _steady(start: datetime, end: datetime, kwh_per_min: float, first: float, every: timedelta = 5 * MIN
            ) -> list[tuple[datetime, float]]:
    out, start = [], start.astimezone(timezone.utc)  # aware arithmetic in one zone is wall-clock arithmetic
    t = start
    while t <= end:
        out.append((t, first + (t - start) / MIN * kwh_per_min))
        t += every
    return out


def _get(api: str, device_id: str, **query: Any) -> dict:
    status, body = http("GET", f"{api}/api/v1/devices/{device_id}/consumption?{urlencode(query)}",
                        headers=platform_admin())
    assert status == 200, body
    return body


def _midnight(day: date, tz: str) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(tz))


def test_rollover_in_vladivostok_half_hours(runtime: dict) -> None:
    settings, api = runtime["settings"], runtime["api"]
    tz, device = "Asia/Vladivostok", "cons-rollover"
    _device(settings.pg_dsn, device, "wb-map3e-fw1", tz)
    # The legacy WB-MAP3E energy register is a u64 of 3.125e-6 kWh: it wraps at 2^64 × 3.125e-6 kWh.
    wrap = next(f for f in PROFILES["wb-map3e-fw1"].fields if f.quantity == ENERGY).wrap_value
    assert wrap == pytest.approx(2**64 * 3.125e-6)
    day = date(2026, 6, 10)
    start = _midnight(day, tz)
    points = _steady(start - 5 * MIN, start + timedelta(days=1, minutes=5), 0.1, wrap - 72.0)
    points = [(t, v - wrap if v >= wrap else v) for t, v in points]  # wraps at about 12:00
    _write(settings.pg_dsn, device, points)
    body = _get(api, device, **{"from": start.isoformat(), "to": (start + timedelta(days=1)).isoformat()})
    assert body["timezone"] == tz and body["unit"] == "kWh"
    intervals = body["intervals"]
    assert len(intervals) == 48
    assert intervals[0]["start"] == "2026-06-10T00:00:00+10:00" and intervals[-1]["end"] == "2026-06-11T00:00:00+10:00"
    assert all(i["status"] == "actual" and i["complete"] for i in intervals)
    # 3 kWh every half-hour, through the wrap too (the register's resolution at 5.8e13 kWh is ~0.008 kWh).
    assert [i["energy"] for i in intervals] == pytest.approx([3.0] * 48, abs=0.02)
    assert body["total"] == pytest.approx(144.0, abs=0.02)
    assert [d["kind"] for d in body["counter_drops"]] == ["rollover"]
    assert sum("COUNTER_DECREASE" in i["quality_flags"] for i in intervals) == 1
    day_sum = _get(api, device, interval="1d", **{"from": start.isoformat(),
                                                  "to": (start + timedelta(days=1)).isoformat()})
    assert [(i["start"], i["half_hours"]) for i in day_sum["intervals"]] == [("2026-06-10T00:00:00+10:00", 48)]
    assert day_sum["intervals"][0]["energy"] == pytest.approx(144.0, abs=0.02)


def test_replaced_meter_gives_no_negative_interval(runtime: dict) -> None:
    settings, api = runtime["settings"], runtime["api"]
    tz, device = "Europe/Moscow", "cons-replaced"
    _device(settings.pg_dsn, device, "sdm630", None)  # the default time zone setting: Moscow
    start = _midnight(date(2026, 6, 11), tz)
    old = _steady(start - 5 * MIN, start + timedelta(hours=10, minutes=10), 0.1, 48_000.0)
    new = _steady(start + timedelta(hours=10, minutes=15), start + timedelta(days=1, minutes=5), 0.1, 0.5)
    _write(settings.pg_dsn, device, old + new)
    body = _get(api, device, **{"from": start.isoformat(), "to": (start + timedelta(days=1)).isoformat()})
    assert body["timezone"] == tz
    energies = [i["energy"] for i in body["intervals"]]
    assert min(energies) >= 0
    # Before plus after: 0.1 kWh a minute all day (the new meter counted 0.5 kWh in its first 5 minutes).
    assert energies == pytest.approx([3.0] * 48, abs=1e-6)
    assert [d["kind"] for d in body["counter_drops"]] == ["reset"]


def test_gaps_are_estimated_with_their_method_and_late_or_repeated_readings_do_not_double(runtime: dict) -> None:
    settings, api = runtime["settings"], runtime["api"]
    tz, device = "Europe/Moscow", "cons-gaps"
    _device(settings.pg_dsn, device, "sdm630", tz)
    day = date(2026, 7, 20)  # a Monday; the Monday before is its like day
    before = _midnight(day - timedelta(weeks=1), tz)
    start = _midnight(day, tz)
    # A week of readings: 1 kWh a half-hour by night, 4 by day (08:00..20:00), every 5 minutes.
    points, value, t = [], 10_000.0, before
    while t <= start + timedelta(days=1):
        points.append((t, value))
        rate = 4.0 if 8 <= t.astimezone(ZoneInfo(tz)).hour < 20 else 1.0
        value += rate / 6
        t += 5 * MIN
    short = (start + timedelta(hours=2, minutes=50), start + timedelta(hours=4, minutes=10))  # 80 min
    long_ = (start + timedelta(hours=9, minutes=40), start + timedelta(hours=15, minutes=20))  # 5 h 40 min
    held_back = [p for p in points if short[0] < p[0] < short[1] or long_[0] < p[0] < long_[1]]
    _write(settings.pg_dsn, device, [p for p in points if p not in held_back])
    query = {"from": start.isoformat(), "to": (start + timedelta(days=1)).isoformat()}
    body = _get(api, device, **query)
    by_start = {i["start"][11:16]: i for i in body["intervals"]}
    long_slots = [f"{h:02}:{m:02}" for h in range(9, 16) for m in (0, 30)][1:-1]  # 09:30 .. 15:00
    assert {k for k, i in by_start.items() if i["status"] == "estimated"} == {
        "02:30", "03:00", "03:30", "04:00", *long_slots}
    assert by_start["03:00"]["methods"] == ["linear"] and "ESTIMATED" in by_start["03:00"]["quality_flags"]
    assert by_start["12:00"]["methods"] == ["like_day"] and by_start["12:00"]["energy"] == pytest.approx(4.0)
    assert [(g["start"][11:16], g["half_hours"], g["method"]) for g in body["gaps"]] == [
        ("02:30", 4, "linear"), ("09:30", 12, "like_day")]
    day_total = 24 * 1.0 + 24 * 4.0
    assert body["total"] == pytest.approx(day_total)
    # Asked for a range that cuts the long gap in two, the estimates are the same ones.
    cut = _get(api, device, **{"from": (start + timedelta(hours=12)).isoformat(),
                               "to": (start + timedelta(hours=13)).isoformat()})
    assert [(i["start"], i["energy"], i["methods"]) for i in cut["intervals"]] == [
        (by_start[k]["start"], by_start[k]["energy"], ["like_day"]) for k in ("12:00", "12:30")]

    # The held-back readings arrive late, and every reading of the day is delivered again: the archive
    # keeps each key once, the gaps close, and the day's energy stays what the counter advanced.
    _write(settings.pg_dsn, device, held_back + points[-300:])
    body = _get(api, device, **query)
    assert all(i["status"] == "actual" for i in body["intervals"]) and body["gaps"] == []
    assert body["total"] == pytest.approx(day_total)
    assert [i["energy"] for i in body["intervals"]] == pytest.approx(
        [4.0 if 8 <= n // 2 < 20 else 1.0 for n in range(48)])


def test_daylight_saving_days_and_local_months(runtime: dict) -> None:
    settings, api = runtime["settings"], runtime["api"]
    tz, device = "Europe/Berlin", "cons-berlin"
    _device(settings.pg_dsn, device, "sdm630", tz)
    start, end = _midnight(date(2026, 10, 24), tz), _midnight(date(2026, 11, 2), tz)
    _write(settings.pg_dsn, device, _steady(start - 5 * MIN, end + 5 * MIN, 0.05, 700.0, every=10 * MIN))
    query = {"from": start.isoformat(), "to": end.isoformat()}
    days = _get(api, device, interval="1d", **query)["intervals"]
    assert [d["half_hours"] for d in days] == [48, 50] + [48] * 7  # 25 October 2026: 25 hours
    assert days[1]["energy"] == pytest.approx(25 * 60 * 0.05)
    months = _get(api, device, interval="1mo", **query)["intervals"]
    assert [(m["start"], m["end"]) for m in months] == [
        ("2026-10-24T00:00:00+02:00", "2026-11-01T00:00:00+01:00"),
        ("2026-11-01T00:00:00+01:00", "2026-11-02T00:00:00+01:00")]
    hours = _get(api, device, interval="1h", **query)["intervals"]
    assert len(hours) == 9 * 24 + 1
    assert sum(h["energy"] for h in hours) == pytest.approx(sum(d["energy"] for d in days))


def test_bad_requests_get_a_clear_answer(runtime: dict) -> None:
    settings, api = runtime["settings"], runtime["api"]
    _device(settings.pg_dsn, "cons-bad", "sdm630", None)
    base = f"{api}/api/v1/devices"
    status, body = http("GET", f"{base}/cons-bad/consumption?interval=15m", headers=platform_admin())
    assert status == 422 and body["detail"][0]["loc"] == ["query", "interval"]
    status, body = http("GET", f"{base}/no-such-device/consumption", headers=platform_admin())
    assert status == 404 and "no-such-device" in body["detail"]
    status, body = http("GET", f"{base}/cons-bad/consumption?quantity=1-0:32.7.0", headers=platform_admin())
    assert status == 422 and "not an energy register" in body["detail"]
    query = urlencode({"from": "2026-06-02T00:00:00+03:00", "to": "2026-06-01T00:00:00+03:00"})
    status, body = http("GET", f"{base}/cons-bad/consumption?{query}", headers=platform_admin())
    assert status == 422 and "earlier" in body["detail"]
    query = urlencode({"from": "2026-01-01T00:00:00+03:00", "to": "2026-06-01T00:00:00+03:00"})
    status, body = http("GET", f"{base}/cons-bad/consumption?{query}", headers=platform_admin())
    assert status == 422 and "at most 93 days" in body["detail"]
    # A device with no readings: every half-hour missing, null energy, never a made-up number.
    body = _get(api, "cons-bad", **{"from": "2026-06-01T00:00:00+03:00", "to": "2026-06-01T03:00:00+03:00"})
    assert [(i["energy"], i["status"]) for i in body["intervals"]] == [(None, "missing")] * 6
