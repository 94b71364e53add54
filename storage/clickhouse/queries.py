"""Aggregate reads of the analytics copy: interval energy and statistics per device or per organisation.

Energy of an interval is how much the cumulative register rose from the end of the interval before to
the end of this one: `last - lagInFrame(last)` over a device's intervals in time order (the rollups keep
the register's first and last value per interval, schema.py). The interval before `from` is read too, so
the first interval gets its start from it; when there is none (the device's first reading, or a gap just
before) the interval's own first reading is its start. After a gap, the energy of the whole gap lands in
the first interval with readings: the register says how much was used, not when. A register that went
down (a meter replaced or reset) gives no energy for that interval and is counted in `counter_drops`.
An organisation's aggregate sums its devices' energies per interval, over the devices it owns now
(the `devices` copy); days and months are each device's local calendar days (schema.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from uuid import UUID

from clickhouse_connect.driver.client import Client

from storage.clickhouse.schema import rollup_table

TIME_INTERVALS = {"30m": timedelta(minutes=30), "1h": timedelta(hours=1)}
DATE_INTERVALS = ("1d", "1mo")


@dataclass(frozen=True, slots=True)
class Aggregate:
    start: datetime | date  # UTC instant (30m, 1h) or local calendar date (1d, 1mo)
    energy: float | None  # the register's rise over the interval (summed over devices); None: no rise known
    readings: int  # distinct readings (per device) behind it
    devices: int  # devices with readings in it
    counter_drops: int  # devices whose register went down in it
    quality: int  # OR of the readings' quality bits
    min_value: float
    max_value: float
    last_value: float  # the register at the end (for one device; the largest of them for several)


def _previous(interval: str, start: datetime | date) -> datetime | date:
    """The start of the interval before the one at `start` (the bucket whose end register starts it)."""
    if interval in TIME_INTERVALS:
        assert isinstance(start, datetime)
        return start - TIME_INTERVALS[interval]
    d = start if not isinstance(start, datetime) else start.date()
    if interval == "1d":
        return d - timedelta(days=1)
    first = d.replace(day=1)
    return (first - timedelta(days=1)).replace(day=1)


def _bound(interval: str, name: str) -> str:
    return (f"toDateTime({{{name}:Int64}}, 'UTC')" if interval in TIME_INTERVALS else f"{{{name}:Date}}")


def _value(interval: str, t: datetime | date) -> int | date:
    if interval in TIME_INTERVALS:
        assert isinstance(t, datetime)
        return int(t.timestamp())
    return t.date() if isinstance(t, datetime) else t


def aggregates(client: Client, database: str, quantity: str, interval: str, start: datetime | date,
               end: datetime | date, *, device_id: str | None = None,
               organisation_id: UUID | None = None) -> list[Aggregate]:
    """Intervals starting in [start, end), of one device or of one organisation's devices (exactly one given).
    `start`/`end`: aware UTC datetimes for 30m/1h, dates (local calendar) for 1d/1mo."""
    if (device_id is None) == (organisation_id is None):
        raise ValueError("give a device or an organisation")
    table = rollup_table(database, interval)
    if device_id is not None:
        which = "device_id = {device:String}"
    else:
        which = (f"device_id IN (SELECT device_id FROM {database}.devices FINAL"
                 " WHERE deleted = 0 AND organisation_id = {org:UUID})")
    sql = f"""
        SELECT bucket, sum(energy) AS energy, sum(readings) AS readings, count() AS devices,
               countIf(delta < 0) AS counter_drops, groupBitOr(quality) AS quality,
               min(min_value) AS min_value, max(max_value) AS max_value, max(last_value) AS last_value
        FROM (
            SELECT device_id, bucket, readings, quality, min_value, max_value, last_value,
                   last_value - lagInFrame(last_value, 1, first_value) OVER w AS delta,
                   if(delta < 0, NULL, delta) AS energy
            FROM (
                SELECT device_id, bucket, argMinMerge(first) AS first_value, argMaxMerge(last) AS last_value,
                       min(min_value) AS min_value, max(max_value) AS max_value,
                       uniqExactMerge(readings) AS readings, groupBitOr(quality) AS quality
                FROM {table}
                WHERE quantity = {{quantity:String}} AND {which}
                  AND bucket >= {_bound(interval, 'lo')} AND bucket < {_bound(interval, 'hi')}
                GROUP BY device_id, bucket
            )
            WINDOW w AS (PARTITION BY device_id ORDER BY bucket ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
        )
        WHERE bucket >= {_bound(interval, 'start')}
        GROUP BY bucket ORDER BY bucket"""
    params = {"quantity": quantity, "lo": _value(interval, _previous(interval, start)),
              "start": _value(interval, start), "hi": _value(interval, end),
              "device": device_id or "", "org": str(organisation_id) if organisation_id else None}
    rows = client.query(sql, parameters={k: v for k, v in params.items() if v is not None}).result_rows
    return [Aggregate(_start(r[0]), r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5]), r[6], r[7], r[8])
            for r in rows]


def _start(bucket: datetime | date) -> datetime | date:
    # chDB drops the zone of DateTime('UTC') values (clickhouse_connect's _chdbclient): they are UTC.
    if isinstance(bucket, datetime):
        return bucket.replace(tzinfo=timezone.utc) if bucket.tzinfo is None else bucket.astimezone(timezone.utc)
    return bucket


@dataclass(frozen=True, slots=True)
class RawCounts:
    readings: int  # distinct reading keys (FINAL: what every query sees)
    stored_rows: int  # rows on disk before merges: more than `readings` after a redelivery


def raw_counts(client: Client, database: str, device_ids: list[str]) -> RawCounts:
    table = f"{database}.readings"
    where = "WHERE device_id IN {ids:Array(String)}"
    final = client.query(f"SELECT count() FROM {table} FINAL {where}", parameters={"ids": device_ids}).result_rows
    stored = client.query(f"SELECT count() FROM {table} {where}", parameters={"ids": device_ids}).result_rows
    return RawCounts(int(final[0][0]), int(stored[0][0]))


def raw_readings(client: Client, database: str, device_id: str, quantity: str) -> list[tuple[int, float]]:
    """(ts_ms, value) of one device's quantity, deduplicated, in time order."""
    rows = client.query(f"SELECT toUnixTimestamp64Milli(ts), value FROM {database}.readings FINAL"
                        " WHERE device_id = {d:String} AND quantity = {q:String} ORDER BY ts",
                        parameters={"d": device_id, "q": quantity}).result_rows
    return [(int(r[0]), float(r[1])) for r in rows]
