"""`meterray bench clickhouse`: aggregate latency over a year of 30-minute data, from the ClickHouse rollups
(storage/clickhouse, embedded chDB through clickhouse-connect) beside the same aggregate computed by PostgreSQL
from the raw archive (monitoring.readings), in the same run, on the same generated data.

Data: `devices` meters × `days` days of half-hourly A+ register readings (meter i rises 0.25 + (i % 10) × 0.05
kWh per half-hour), one organisation owning them all. Both stores generate it server-side (ClickHouse:
INSERT … SELECT FROM numbers(), through the rollup views as the writer's inserts go; PostgreSQL:
INSERT … SELECT FROM generate_series into the partitioned archive), so loading measures the stores, not Python.

Measured, each `repeats` times after one warm-up (median and best, ms):
- one device, daily energy over the year (365 rows);
- all devices, daily energy of the organisation over the year (365 rows summed over `devices` meters);
- all devices, monthly energy of the organisation over the year.
The totals of both stores are compared: a benchmark of a wrong answer is worth nothing.
"""
from __future__ import annotations

import asyncio
import shutil
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any

import asyncpg

from bench.modbus import RESULTS, _say, _write
from meterray.settings import Settings
from storage.clickhouse import queries
from storage.clickhouse.store import ClickHouseStore
from storage.postgres.databases import drop_database, recreate_database
from storage.postgres.raw_aggregates import daily_energy

A_PLUS = "1-0:1.8.0"
TZ = "Europe/Moscow"
DATABASE = "meterray_bench"
CHUNK_DEVICES = 100  # rows generated per INSERT: 100 meters × a year of half-hours = 1.75 M


def _rate(i: int) -> float:
    return 0.25 + (i % 10) * 0.05


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[dict[str, float], Any]:
    fn()  # warm-up: caches, plans
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t) * 1000)
    return {"median_ms": round(statistics.median(times), 2), "best_ms": round(min(times), 2)}, result


def _load_clickhouse(store: ClickHouseStore, devices: int, start: datetime, half_hours: int, org: uuid.UUID) -> float:
    c, db = store.client(), store.database
    t0 = time.perf_counter()
    epoch = int(start.timestamp())
    for lo in range(0, devices, CHUNK_DEVICES):
        n = min(CHUNK_DEVICES, devices - lo)
        c.command(f"""
            INSERT INTO {db}.readings (device_id, quantity, ts, value, unit, quality, source, day)
            SELECT concat('bench-', leftPad(toString(d), 4, '0')), '{A_PLUS}',
                   toDateTime64({epoch} + k * 1800, 3, 'UTC'), k * (0.25 + (d % 10) * 0.05), 'kWh', 0, 'bench',
                   toDate(toDateTime({epoch} + k * 1800, '{TZ}'))
            FROM (SELECT {lo} + number AS d FROM numbers({n})) AS devices
            CROSS JOIN (SELECT number AS k FROM numbers({half_hours})) AS steps""")
    store.upsert_devices([(f"bench-{i:04d}", _info(i, org), 1) for i in range(devices)])
    return time.perf_counter() - t0


def _info(i: int, org: uuid.UUID) -> Any:
    from meterray.device_info import DeviceInfo

    return DeviceInfo(f"bench-{i:04d}", f"bench {i}", "modbus_tcp", "sdm630", org, TZ)


async def _load_postgres(dsn: str, devices: int, start: datetime, half_hours: int) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        t0 = time.perf_counter()
        month = start.replace(day=1)
        end = start + timedelta(minutes=30 * half_hours)
        while month <= end:
            await conn.execute("SELECT monitoring.ensure_readings_partition($1)", month)
            month = (month + timedelta(days=32)).replace(day=1)
        for lo in range(0, devices, CHUNK_DEVICES):
            n = min(CHUNK_DEVICES, devices - lo)
            await conn.execute(
                """INSERT INTO monitoring.readings (device_id, quantity, ts, value, unit, quality, source)
                   SELECT 'bench-' || lpad(d::text, 4, '0'), $1, $2::timestamptz + k * interval '30 minutes',
                          k * (0.25 + (d % 10) * 0.05), 'kWh', 0, 'bench'
                   FROM generate_series($3::int, $4::int) AS d, generate_series(0, $5::int - 1) AS k""",
                A_PLUS, start, lo, lo + n - 1, half_hours)
        await conn.execute("ANALYZE monitoring.readings")
        return time.perf_counter() - t0
    finally:
        await conn.close()


def run_benchmark(settings: Settings, devices: int = 1000, days: int = 365, repeats: int = 5) -> dict[str, Any]:
    half_hours = days * 48
    start = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days + 1)
    end = start + timedelta(days=days)
    first_day, last_day = start.date(), end.date() + timedelta(days=1)
    org = uuid.uuid4()
    ids = [f"bench-{i:04d}" for i in range(devices)]

    ch_dir = settings.var_dir / "bench-clickhouse"
    shutil.rmtree(ch_dir, ignore_errors=True)
    store = ClickHouseStore(f"chdb://{ch_dir.resolve()}", "bench")
    dsn = asyncio.run(recreate_database(settings.pg_dsn, DATABASE))
    try:
        from meterray.app.runtime import migrate_database

        migrate_database(dsn)
        _say(f"loading ClickHouse: {devices} meters × {days} days of half-hours ({devices * half_hours:,} readings)")
        ch_load_s = _load_clickhouse(store, devices, start, half_hours, org)
        _say(f"  {ch_load_s:.1f} s; loading PostgreSQL")
        pg_load_s = asyncio.run(_load_postgres(dsn, devices, start, half_hours))
        _say(f"  {pg_load_s:.1f} s; measuring")
        read = store.client("read")

        def ch(interval: str, **who: Any) -> Callable[[], list[queries.Aggregate]]:
            lo = first_day if interval == "1d" else first_day.replace(day=1)
            return lambda: queries.aggregates(read, store.database, A_PLUS, interval, lo, last_day, **who)

        # One open connection for every PostgreSQL query, as the ClickHouse client is open: the timings are the
        # queries', not the connection set-up's.
        loop = asyncio.new_event_loop()
        conn = loop.run_until_complete(asyncpg.connect(dsn))

        def pg(month: bool, which: list[str]) -> Callable[[], list[tuple[date, float, int, int]]]:
            return lambda: loop.run_until_complete(daily_energy(conn, which, A_PLUS, TZ, start, end, month=month))

        cases = {"one_device_daily": (ch("1d", device_id=ids[0]), pg(False, ids[:1])),
                 f"{devices}_devices_daily": (ch("1d", organisation_id=org), pg(False, ids)),
                 f"{devices}_devices_monthly": (ch("1mo", organisation_id=org), pg(True, ids))}
        results: dict[str, Any] = {}
        for name, (ch_fn, pg_fn) in cases.items():
            ch_t, ch_rows = _timed(ch_fn, repeats)
            pg_t, pg_rows = _timed(pg_fn, repeats)
            ch_total = sum(a.energy or 0 for a in ch_rows)
            pg_total = sum(r[1] or 0 for r in pg_rows)
            agree = (abs(ch_total - pg_total) <= 1e-6 * max(1.0, pg_total)
                     and sum(a.readings for a in ch_rows) == sum(r[2] for r in pg_rows))
            results[name] = {"clickhouse": {**ch_t, "rows": len(ch_rows)},
                             "postgres_raw": {**pg_t, "rows": len(pg_rows)},
                             "speed_up": round(pg_t["median_ms"] / max(ch_t["median_ms"], 1e-3), 1),
                             "energy_kwh": round(ch_total, 3), "results_agree": agree}
            _say(f"  {name}: ClickHouse {ch_t['median_ms']} ms, PostgreSQL {pg_t['median_ms']} ms, agree={agree}")
        loop.run_until_complete(conn.close())
        loop.close()
        expected = sum(_rate(i) * (half_hours - 1) for i in range(devices))
        result = {
            "scenario": "clickhouse", "devices": devices, "days": days, "readings": devices * half_hours,
            "repeats": repeats, "clickhouse": f"embedded chDB via clickhouse-connect ({store.url.split('://')[0]})",
            "load_s": {"clickhouse": round(ch_load_s, 1), "postgres": round(pg_load_s, 1)},
            "cases": results, "expected_fleet_energy_kwh": round(expected, 3),
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "note": "ClickHouse reads the rollups (argMin/argMax per device and local day or month, filled by "
                    "materialized views on insert); PostgreSQL computes the same energy from the raw archive "
                    "(first/last register per device and local day). Same definition, same data, same process.",
        }
        _write("clickhouse.json", result)
        return result
    finally:
        store.close()
        shutil.rmtree(ch_dir, ignore_errors=True)
        asyncio.run(drop_database(settings.pg_dsn, DATABASE))


__all__ = ["RESULTS", "run_benchmark"]
