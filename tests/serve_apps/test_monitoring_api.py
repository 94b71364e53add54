"""The monitoring API over the real Serve app and PostgreSQL: quality flags by name, paged device list."""
from __future__ import annotations

import asyncio
import base64
from datetime import datetime, timedelta, timezone

import asyncpg

from meterray.domain import Quality
from storage.postgres.readings import ReadingsWriter
from tests.pipeline.helpers import all_devices, http, platform_admin, sql

ENERGY = "1-0:1.8.0"


def _add_unpolled_devices(dsn: str, ids: list[str]) -> None:
    # Devices without a connection: listed by the API, never polled.
    sql(dsn, "INSERT INTO devices.devices (id, name, protocol, profile, unit_id)"
             " SELECT i, i, 'modbus_tcp', 'sdm630', 1 FROM unnest($1::text[]) AS i ON CONFLICT DO NOTHING", ids)


def test_readings_show_quality_flags_by_name_and_as_bitmask(runtime: dict) -> None:
    settings, api = runtime["settings"], runtime["api"]
    device = "api-flags-1"
    _add_unpolled_devices(settings.pg_dsn, [device])
    flags = [f for f in Quality if f.value]  # every flag the domain defines, whatever it grows to
    start = datetime(2031, 6, 1, tzinfo=timezone.utc)
    every = 0
    for f in flags:
        every |= f.value
    masks = [f.value for f in flags] + [0, every]
    rows = [(device, ENERGY, int((start + timedelta(seconds=i)).timestamp() * 1000), 100.0 + i, "kWh", m, "test")
            for i, m in enumerate(masks)]

    async def write() -> None:
        conn = await asyncpg.connect(settings.pg_dsn)
        try:
            await ReadingsWriter().write(conn, rows)
        finally:
            await conn.close()

    asyncio.run(write())
    window = f"from={start.isoformat()}&to={(start + timedelta(minutes=1)).isoformat()}".replace("+", "%2B")
    status, body = http("GET", f"{api}/api/v1/devices/{device}/readings?quantity={ENERGY}&{window}",
                        headers=platform_admin())
    assert status == 200, body
    got = [(r["quality"], r["quality_flags"]) for r in body["readings"]]
    expected = [(f.value, [f.name]) for f in flags] + [(0, []), (every, [f.name for f in flags])]
    assert got == expected
    status, body = http("GET", f"{api}/api/v1/devices/{device}/readings/current", headers=platform_admin())
    assert status == 200 and body["readings"][0]["quality_flags"] == [f.name for f in flags]


def test_devices_page_by_keyset_cursor(runtime: dict) -> None:
    settings, api = runtime["settings"], runtime["api"]
    _add_unpolled_devices(settings.pg_dsn, [f"api-page-{i}" for i in range(7)])
    everyone = [r["id"] for r in sql(settings.pg_dsn, "SELECT id FROM devices.devices ORDER BY id")]

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        status, body = http("GET", f"{api}/api/v1/devices?limit=3" + (f"&cursor={cursor}" if cursor else ""),
                            headers=platform_admin())
        assert status == 200, body
        assert len(body["devices"]) <= 3
        seen += [d["id"] for d in body["devices"]]
        pages += 1
        if pages == 2:  # a device added behind the cursor mid-way is neither repeated nor does it shift pages
            _add_unpolled_devices(settings.pg_dsn, ["0-api-late"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == everyone and pages == -(-len(everyone) // 3)
    assert "0-api-late" in [d["id"] for d in all_devices(api)]
    status, body = http("GET", f"{api}/api/v1/devices", headers=platform_admin())
    assert status == 200 and len(body["devices"]) == min(100, len(everyone) + 1)


def test_bad_paging_parameters_get_a_clear_422(runtime: dict) -> None:
    api = runtime["api"]
    tampered = base64.urlsafe_b64encode(b'{"after": 3}').decode().rstrip("=")
    for cursor in ("not-a-cursor!", "AAAA", tampered):
        status, body = http("GET", f"{api}/api/v1/devices?cursor={cursor}", headers=platform_admin())
        assert status == 422 and "invalid cursor" in body["detail"], (cursor, body)
    for limit in ("0", "1001", "many"):
        status, body = http("GET", f"{api}/api/v1/devices?limit={limit}", headers=platform_admin())
        assert status == 422 and body["detail"][0]["loc"] == ["query", "limit"], (limit, body)
