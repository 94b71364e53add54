"""Tables of the analytics copy, created idempotently (`ensure_schema`); no migrations: every statement is
CREATE ... IF NOT EXISTS and the copy can always be rebuilt from Kafka or PostgreSQL.

readings — the raw copy, a ReplacingMergeTree on the reading key (device_id, quantity, ts), as the
  PostgreSQL archive's primary key: a record delivered twice (a writer that crashed after its insert and
  before its commit) is two rows until a merge keeps one; queries that read raw rows use FINAL.
  `day` is the reading's calendar date in its device's time zone, stamped by the writer (ClickHouse takes
  a time zone only as a constant, so a per-device zone cannot be applied inside a view).
rollup_30m, rollup_1h, rollup_1d, rollup_1mo — one AggregatingMergeTree per interval, each filled by a
  materialized view on every insert into `readings`. Redelivery inserts the same rows again, and the
  view sees them again, so the rollups keep only aggregates that a repeated row cannot change:
  argMin/argMax of the value by time (the register at the start and the end of the interval), min, max,
  uniqExact of the timestamps (how many readings) and the OR of quality bits. No sum and no count is
  stored: those would double. Energy per interval is derived at query time (storage.clickhouse.queries)
  as the difference of the end registers of consecutive intervals.
  Half-hours and hours are UTC buckets (the same as local ones in whole- and half-hour zones: all of
  Russia); days and months are local, on `day`.
devices — device metadata copied from the compacted `devices` topic (ReplacingMergeTree on the Kafka
  offset, so the latest record per device wins; a tombstone sets `deleted`). Organisation aggregates
  group the per-device rollups by the device's current organisation at query time.
"""
from __future__ import annotations

from clickhouse_connect.driver.client import Client

INTERVALS = ("30m", "1h", "1d", "1mo")
# bucket column type and its expression over a `readings` row, per interval
_BUCKETS = {
    "30m": ("DateTime('UTC')", "toStartOfInterval(ts, INTERVAL 30 MINUTE)"),
    "1h": ("DateTime('UTC')", "toStartOfHour(ts)"),
    "1d": ("Date", "day"),
    "1mo": ("Date", "toStartOfMonth(day)"),
}


def rollup_table(database: str, interval: str) -> str:
    if interval not in _BUCKETS:
        raise ValueError(f"no rollup for interval {interval!r}; one of {', '.join(INTERVALS)}")
    return f"{database}.rollup_{interval}"


def statements(database: str) -> list[str]:
    db = database
    out = [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"""CREATE TABLE IF NOT EXISTS {db}.readings (
            device_id String,
            quantity LowCardinality(String),
            ts DateTime64(3, 'UTC'),
            value Float64,
            unit LowCardinality(String),
            quality UInt32,
            source LowCardinality(String),
            day Date,
            inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = ReplacingMergeTree(inserted_at)
        PARTITION BY toYYYYMM(ts)
        ORDER BY (device_id, quantity, ts)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.devices (
            device_id String,
            name String,
            protocol LowCardinality(String),
            profile LowCardinality(String),
            organisation_id Nullable(UUID),
            timezone String,
            deleted UInt8,
            version UInt64
        ) ENGINE = ReplacingMergeTree(version)
        ORDER BY device_id""",
    ]
    for interval, (bucket_type, bucket_expr) in _BUCKETS.items():
        table = rollup_table(db, interval)
        out.append(f"""CREATE TABLE IF NOT EXISTS {table} (
            device_id String,
            quantity LowCardinality(String),
            bucket {bucket_type},
            first AggregateFunction(argMin, Float64, DateTime64(3, 'UTC')),
            last AggregateFunction(argMax, Float64, DateTime64(3, 'UTC')),
            min_value SimpleAggregateFunction(min, Float64),
            max_value SimpleAggregateFunction(max, Float64),
            readings AggregateFunction(uniqExact, DateTime64(3, 'UTC')),
            quality SimpleAggregateFunction(groupBitOr, UInt32)
        ) ENGINE = AggregatingMergeTree
        PARTITION BY toYear(bucket)
        ORDER BY (device_id, quantity, bucket)""")
        out.append(f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {table}_mv TO {table} AS
        SELECT device_id, quantity, {bucket_expr} AS bucket,
               argMinState(value, ts) AS first, argMaxState(value, ts) AS last,
               min(value) AS min_value, max(value) AS max_value,
               uniqExactState(ts) AS readings, groupBitOr(quality) AS quality
        FROM {db}.readings GROUP BY device_id, quantity, bucket""")
    return out


def ensure_schema(client: Client, database: str) -> None:
    for statement in statements(database):
        client.command(statement)
