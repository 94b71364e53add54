"""Queries of the `monitoring` schema: the partitioned archive and the current value per quantity."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from operator import itemgetter
from uuid import UUID

import asyncpg

from storage.postgres.devices import owned_by

# (device_id, quantity, ts_ms, value, unit, quality, source); ts_ms: UTC epoch milliseconds.
ReadingRow = tuple[str, str, int, float, str, int, str]

_STAGE = "readings_in"
# The stage holds the timestamp as epoch milliseconds, converted by PostgreSQL on the way into the
# archive: encoding a datetime per row was a third of the writer's COPY (py-spy, 2,000 meters/s),
# an integer costs next to nothing, and the readings of one poll share one timestamp anyway.
_STAGE_DDL = (f'CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (device_id text COLLATE "C", quantity text COLLATE "C",'
              " ts_ms bigint, value double precision, unit text, quality integer, source text)"
              " ON COMMIT DELETE ROWS")
_TS = "timestamptz 'epoch' + ts_ms * interval '1 millisecond'"  # exact: integer milliseconds, no float


def ts_from_ms(ts_ms: int) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc)


_COLUMNS = "device_id, quantity, ts, value, unit, quality, source"
# A batch holds each key once (the last one wins), sorted on the key: index inserts in key order.
_BATCH = (f"SELECT DISTINCT ON (device_id, quantity, ts_ms) device_id, quantity, {_TS}, value, unit, quality, source"
          f" FROM {_STAGE} ORDER BY device_id, quantity, ts_ms")


class ReadingsWriter:
    """Idempotent batched writes: staged by COPY, then inserted on the key (device_id, quantity, ts).

    Almost every batch holds only new keys; a replay (a stage restarted after its write and before its
    commit) or a corrected value holds keys already stored. So the batch is first inserted plainly,
    in a savepoint, and only when a key exists (unique violation) written again as an upsert: a plain
    insert costs PostgreSQL about half of an `ON CONFLICT DO UPDATE` (speculative insertion on
    every row), and both leave the same rows.
    """

    def __init__(self) -> None:
        self._months: set[tuple[int, int]] = set()
        self.upserts = 0  # batches that held keys already stored (replays and corrections)

    async def write(self, conn: asyncpg.Connection, rows: Sequence[ReadingRow]) -> None:
        if not rows:
            return
        await self._ensure_partitions(conn, rows)
        async with conn.transaction():
            await conn.execute(_STAGE_DDL)
            await conn.copy_records_to_table(_STAGE, records=rows)
            try:
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO monitoring.readings ({_COLUMNS}) {_BATCH}")
            except asyncpg.UniqueViolationError:
                self.upserts += 1
                # A replayed message writes nothing new; a corrected value (same key) replaces the old one.
                await conn.execute(
                    f"""
                    INSERT INTO monitoring.readings AS r ({_COLUMNS}) {_BATCH}
                    ON CONFLICT (device_id, quantity, ts) DO UPDATE
                        SET value = excluded.value, unit = excluded.unit, quality = excluded.quality,
                            source = excluded.source
                        WHERE (r.value, r.unit, r.quality)
                            IS DISTINCT FROM (excluded.value, excluded.unit, excluded.quality)
                    """
                )
            await conn.execute(
                f"""
                INSERT INTO monitoring.readings_current AS c (device_id, quantity, ts, value, unit, quality)
                SELECT DISTINCT ON (device_id, quantity) device_id, quantity, {_TS}, value, unit, quality
                FROM {_STAGE} ORDER BY device_id, quantity, ts_ms DESC
                ON CONFLICT (device_id, quantity) DO UPDATE
                    SET ts = excluded.ts, value = excluded.value, unit = excluded.unit, quality = excluded.quality
                    WHERE excluded.ts >= c.ts
                """
            )

    async def _ensure_partitions(self, conn: asyncpg.Connection, rows: Sequence[ReadingRow]) -> None:
        months = {(t.year, t.month) for t in map(ts_from_ms, set(map(itemgetter(2), rows)))} - self._months
        for year, month in sorted(months):
            await conn.execute(
                "SELECT monitoring.ensure_readings_partition($1)", datetime(year, month, 1, tzinfo=timezone.utc)
            )
            self._months.add((year, month))


async def current_readings(conn: asyncpg.Connection | asyncpg.Pool, device_id: str, *,
                           organisation_id: UUID | None) -> list[asyncpg.Record] | None:
    """The device's latest value per quantity ([] before its first reading); None when there is no such
    device or it is not the organisation's (None: any). One query: the API's busiest read."""
    rows = await conn.fetch(
        "SELECT r.quantity, r.ts, r.value, r.unit, r.quality FROM devices.devices d"
        " LEFT JOIN monitoring.readings_current r ON r.device_id = d.id"
        " WHERE d.id = $1 AND ($2::uuid IS NULL OR d.organisation_id = $2) ORDER BY r.quantity",
        device_id, organisation_id,
    )
    if not rows:
        return None
    return [] if rows[0]["quantity"] is None else rows


async def reading_history(
    conn: asyncpg.Connection | asyncpg.Pool,
    device_id: str,
    quantity: str | None,
    start: datetime,
    end: datetime,
    limit: int,
    *,
    organisation_id: UUID | None,
) -> list[asyncpg.Record]:
    """The archive of a device of the organisation (None: any); nothing for another organisation's device."""
    return await conn.fetch(
        f"""
        SELECT quantity, ts, value, unit, quality FROM monitoring.readings
        WHERE device_id = $1 AND ($2::text IS NULL OR quantity = $2) AND ts >= $3 AND ts < $4
            AND {owned_by("$1", "$6")}
        ORDER BY ts, quantity LIMIT $5
        """,
        device_id, quantity, start, end, limit, organisation_id,
    )


async def count_readings(conn: asyncpg.Connection | asyncpg.Pool, start: datetime, end: datetime) -> int:
    return await conn.fetchval("SELECT count(*) FROM monitoring.readings WHERE ts >= $1 AND ts < $2", start, end)


async def count_reporting_devices(conn: asyncpg.Connection | asyncpg.Pool, since: datetime) -> tuple[int, int]:
    """(devices with a current value newer than `since`, all devices)."""
    row = await conn.fetchrow(
        "SELECT count(*) AS devices, count(*) FILTER (WHERE EXISTS (SELECT 1 FROM monitoring.readings_current c"
        " WHERE c.device_id = d.id AND c.ts > $1)) AS reporting FROM devices.devices d", since)
    return row["reporting"], row["devices"]


async def stored_spans(conn: asyncpg.Connection | asyncpg.Pool,
                       device_ids: Sequence[str]) -> dict[str, dict[str, tuple[int, int]]]:
    """device → quantity → (oldest, newest) ts in epoch ms of its archive: what a backfill leaves alone.
    Two index lookups per (device, quantity) on the archive's key instead of a scan of every reading."""
    rows = await conn.fetch(
        """
        SELECT c.device_id, c.quantity,
               (SELECT min(ts) FROM monitoring.readings r WHERE r.device_id = c.device_id AND r.quantity = c.quantity)
                   AS oldest,
               (SELECT max(ts) FROM monitoring.readings r WHERE r.device_id = c.device_id AND r.quantity = c.quantity)
                   AS newest
        FROM monitoring.readings_current c WHERE c.device_id = ANY($1::text[])
        """,
        list(device_ids),
    )
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for r in rows:
        if r["oldest"] is not None:
            out.setdefault(r["device_id"], {})[r["quantity"]] = (round(r["oldest"].timestamp() * 1000),
                                                                 round(r["newest"].timestamp() * 1000))
    return out
