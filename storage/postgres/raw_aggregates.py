"""The raw-archive baseline of the ClickHouse aggregates (bench/clickhouse.py): the same interval energy
computed by PostgreSQL from monitoring.readings, for comparison only (the API reads ClickHouse).

Same definition as storage.clickhouse.queries: per device and local day (month), the register's first and
last value; energy is the last minus the previous interval's last (the interval's own first when there is
none); summed over the devices per interval.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

import asyncpg


async def daily_energy(conn: asyncpg.Connection, device_ids: Sequence[str], quantity: str, tz: str,
                       start: datetime, end: datetime, month: bool = False) -> list[tuple[date, float, int, int]]:
    """(local day or month, energy, readings, devices) for readings in [start, end)."""
    bucket = "date_trunc('month', ts AT TIME ZONE $3)::date" if month else "(ts AT TIME ZONE $3)::date"
    rows = await conn.fetch(
        f"""
        SELECT bucket, sum(energy) AS energy, sum(n)::bigint AS readings, count(*) AS devices FROM (
            SELECT bucket, n, last - coalesce(lag(last) OVER (PARTITION BY device_id ORDER BY bucket), first) AS energy
            FROM (
                SELECT device_id, {bucket} AS bucket,
                       (array_agg(value ORDER BY ts))[1] AS first, (array_agg(value ORDER BY ts DESC))[1] AS last,
                       count(*) AS n
                FROM monitoring.readings
                WHERE device_id = ANY($1::text[]) AND quantity = $2 AND ts >= $4 AND ts < $5
                GROUP BY 1, 2
            ) per_device
        ) energies GROUP BY bucket ORDER BY bucket
        """, list(device_ids), quantity, tz, start, end)
    return [(r["bucket"], r["energy"], r["readings"], r["devices"]) for r in rows]
