"""Queries of the `devices` schema: connections to poll, devices, and device-processor checkpoints.

Queries the API answers with take `organisation_id` (keyword, no default): the caller's organisation
(meterray.access.Scope), applied in the WHERE clause; None means every organisation (platform staff).
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from meterray.config import validate_connections
from meterray.device_state import DeviceCheckpoint
from meterray.domain import DeviceEvent, DeviceSpec, ModbusConnection

CONFIG_CHANNEL = "meterray_devices_changed"  # NOTIFY'd by triggers on devices.connections / devices.devices


async def sync_profiles(conn: asyncpg.Connection | asyncpg.Pool, names: Collection[str]) -> None:
    """Make `devices.profiles` say which profiles the code knows: new ones added, gone ones unavailable
    (kept while devices still name them, so those devices fail with a reason instead of vanishing)."""
    await conn.execute(
        """
        WITH known AS (SELECT unnest($1::text[]) AS name),
        upserted AS (
            INSERT INTO devices.profiles (name, available) SELECT name, true FROM known
            ON CONFLICT (name) DO UPDATE SET available = true, updated_at = now()
                WHERE NOT devices.profiles.available)
        UPDATE devices.profiles SET available = false, updated_at = now()
        WHERE available AND name NOT IN (SELECT name FROM known)
        """,
        sorted(names),
    )


async def available_profiles(conn: asyncpg.Connection | asyncpg.Pool) -> list[str]:
    """The Modbus meter profiles the database knows (not 'mqtt', the profile of MQTT devices)."""
    return [r["name"] for r in await conn.fetch(
        "SELECT name FROM devices.profiles WHERE available AND name <> 'mqtt' ORDER BY name")]


async def load_modbus_connections(conn: asyncpg.Connection | asyncpg.Pool) -> list[ModbusConnection]:
    rows = await conn.fetch(
        """
        SELECT c.id, c.host, c.port, c.poll_interval_s, c.timeout_s,
               coalesce(array_agg(d.id ORDER BY d.unit_id) FILTER (WHERE d.id IS NOT NULL), '{}') AS ids,
               coalesce(array_agg(d.profile ORDER BY d.unit_id) FILTER (WHERE d.id IS NOT NULL), '{}') AS profiles,
               coalesce(array_agg(d.unit_id ORDER BY d.unit_id) FILTER (WHERE d.id IS NOT NULL), '{}') AS units
        FROM devices.connections c
        LEFT JOIN devices.devices d ON d.connection_id = c.id
        WHERE c.enabled AND c.protocol = 'modbus_tcp'
        GROUP BY c.id
        ORDER BY c.id
        """
    )
    return [
        ModbusConnection(
            r["id"], r["host"], r["port"], r["poll_interval_s"], r["timeout_s"],
            tuple(DeviceSpec(i, p, u) for i, p, u in zip(r["ids"], r["profiles"], r["units"], strict=True)),
        )
        for r in rows
    ]


async def save_modbus_connections(conn: asyncpg.Connection | asyncpg.Pool,
                                  connections: Sequence[ModbusConnection],
                                  organisation_id: UUID | None = None) -> None:
    """Insert or update connections and their devices (idempotent), all or none.

    Checked first against meterray.config (raises ConfigError listing every problem), with the
    profiles the database knows; the table constraints check the same rules again. `organisation_id`
    makes that organisation the devices' owner; None leaves the owner of a device already stored as it
    is (a new one has none: platform staff only see it).
    """
    connections = validate_connections(connections, await available_profiles(conn))
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as c:
            await _save(c, connections, organisation_id)
    else:
        await _save(conn, connections, organisation_id)


async def _save(conn: asyncpg.Connection, connections: Sequence[ModbusConnection],
                organisation_id: UUID | None) -> None:
    async with conn.transaction():
        await _upsert(conn, connections, organisation_id)


async def _upsert(conn: asyncpg.Connection, connections: Sequence[ModbusConnection],
                  organisation_id: UUID | None) -> None:
    # Devices a connection no longer lists are removed with it (a connection's devices are its list).
    await conn.executemany(
        "DELETE FROM devices.devices WHERE connection_id = $1 AND NOT id = ANY($2::text[])",
        [(c.connection_id, [d.device_id for d in c.devices]) for c in connections],
    )
    await conn.executemany(
        """
        INSERT INTO devices.connections (id, protocol, host, port, poll_interval_s, timeout_s)
        VALUES ($1, 'modbus_tcp', $2, $3, $4, $5)
        ON CONFLICT (id) DO UPDATE SET host = excluded.host, port = excluded.port,
            poll_interval_s = excluded.poll_interval_s, timeout_s = excluded.timeout_s, updated_at = now()
        """,
        [(c.connection_id, c.host, c.port, c.poll_interval_s, c.timeout_s) for c in connections],
    )
    await conn.executemany(
        """
        INSERT INTO devices.devices (id, name, protocol, profile, connection_id, unit_id, organisation_id)
        VALUES ($1, $1, 'modbus_tcp', $2, $3, $4, $5)
        ON CONFLICT (id) DO UPDATE SET profile = excluded.profile,
            connection_id = excluded.connection_id, unit_id = excluded.unit_id,
            organisation_id = coalesce(excluded.organisation_id, devices.devices.organisation_id)
        """,
        [(d.device_id, d.profile, c.connection_id, d.unit_id, organisation_id)
         for c in connections for d in c.devices],
    )


async def list_devices(conn: asyncpg.Connection | asyncpg.Pool, after: str | None = None,
                       limit: int | None = None, status: str | None = None, *,
                       organisation_id: UUID | None) -> list[asyncpg.Record]:
    """Devices of the organisation (None: all) in id order; keyset paging: those with an id after
    `after`, at most `limit`; only those in `status` if given (a device without a checkpoint is 'unknown')."""
    return await conn.fetch(
        """
        SELECT d.id, d.name, d.protocol, d.profile, s.last_seen, coalesce(s.status, 'unknown') AS status,
               s.last_failure_kind, s.last_failure, s.last_failure_at, coalesce(s.reasons, '{}') AS reasons,
               coalesce(s.link, 'unknown') AS link, coalesce(s.data, 'unknown') AS data, s.last_success
        FROM devices.devices d LEFT JOIN devices.device_state s ON s.device_id = d.id
        WHERE ($1::text IS NULL OR d.id > $1) AND ($3::text IS NULL OR coalesce(s.status, 'unknown') = $3)
            AND ($4::uuid IS NULL OR d.organisation_id = $4)
        ORDER BY d.id
        LIMIT $2
        """,
        after, limit, status, organisation_id,
    )


async def device_health(conn: asyncpg.Connection | asyncpg.Pool, device_id: str, history: int = 50, *,
                        organisation_id: UUID | None) -> tuple[asyncpg.Record | None, list[asyncpg.Record]]:
    """A device's health (None without a checkpoint, or outside the organisation) and its latest
    transitions, newest first."""
    row = await conn.fetchrow(
        f"""
        SELECT status, reasons, link, data, last_seen, last_success, consecutive_failures, error_ratio,
               clock_offset_s, last_failure_kind, last_failure, last_failure_at, updated_at
        FROM devices.device_state WHERE device_id = $1 AND {owned_by("$1", "$2")}
        """,
        device_id, organisation_id,
    )
    transitions = await conn.fetch(
        "SELECT ts, status, previous, reasons, reason FROM devices.health_transitions WHERE device_id = $1"
        f" AND {owned_by('$1', '$3')} ORDER BY ts DESC, status LIMIT $2",
        device_id, history, organisation_id,
    )
    return row, transitions


async def health_summary(conn: asyncpg.Connection | asyncpg.Pool, *,
                         organisation_id: UUID | None) -> tuple[dict[str, int], dict[str, int]]:
    """The organisation's (None: every) registered devices by status, and by active reason."""
    by_status = await conn.fetch(
        "SELECT coalesce(s.status, 'unknown') AS status, count(*) AS n FROM devices.devices d"
        " LEFT JOIN devices.device_state s ON s.device_id = d.id WHERE ($1::uuid IS NULL OR d.organisation_id = $1)"
        " GROUP BY 1", organisation_id
    )
    by_reason = await conn.fetch(
        "SELECT r AS reason, count(*) AS n FROM devices.devices d JOIN devices.device_state s ON s.device_id = d.id,"
        " unnest(s.reasons) AS r WHERE ($1::uuid IS NULL OR d.organisation_id = $1) GROUP BY 1", organisation_id
    )
    return {r["status"]: r["n"] for r in by_status}, {r["reason"]: r["n"] for r in by_reason}


async def device_schedule(conn: asyncpg.Connection | asyncpg.Pool) -> list[asyncpg.Record]:
    """Every registered device with when it was registered and its poll interval (None: not polled),
    for the device processor's health timing and its sweep over silent devices."""
    return await conn.fetch(
        "SELECT d.id, d.created_at, c.poll_interval_s FROM devices.devices d"
        " LEFT JOIN devices.connections c ON c.id = d.connection_id"
    )


async def get_device(conn: asyncpg.Connection | asyncpg.Pool, device_id: str, *,
                     organisation_id: UUID | None) -> asyncpg.Record | None:
    """The device, if it exists and belongs to the organisation (None: any); another's is None, like a missing one."""
    return await conn.fetchrow(
        "SELECT id, name, protocol, profile, organisation_id, timezone FROM devices.devices d"
        " WHERE id = $1 AND ($2::uuid IS NULL OR d.organisation_id = $2)", device_id, organisation_id)


def owned_by(device: str, organisation: str) -> str:
    """A WHERE term: the device (a parameter or column holding its id) belongs to the organisation
    parameter (a NULL organisation: any). For queries of tables that only hold the device's id."""
    return (f"({organisation}::uuid IS NULL OR EXISTS (SELECT 1 FROM devices.devices o"
            f" WHERE o.id = {device} AND o.organisation_id = {organisation}))")


_STATE_COLUMNS = ("device_id", "status", "last_seen", "last_failure_kind", "last_failure", "last_failure_at",
                  "consecutive_failures", "counters", "source_partition", "source_offset", "source_topic", "reasons",
                  "link", "data", "last_success", "error_ratio", "clock_offset_s", "memory", "swept_at")
_STATE_TYPES = ("text", "text", "timestamptz", "text", "text", "timestamptz", "integer", "text", "integer", "bigint",
                "text", "text", "text", "text", "timestamptz", "double precision", "double precision", "text",
                "timestamptz")


async def load_states(
    conn: asyncpg.Connection | asyncpg.Pool, device_ids: Iterable[str]
) -> dict[str, DeviceCheckpoint]:
    rows = await conn.fetch(
        """
        SELECT device_id, status, last_seen, last_failure_kind, last_failure, last_failure_at,
               consecutive_failures, counters::text AS counters, source_partition, source_offset, source_topic,
               reasons, link, data, last_success, error_ratio, clock_offset_s, memory::text AS memory, swept_at
        FROM devices.device_state WHERE device_id = ANY($1::text[])
        """,
        list(device_ids),
    )
    return {
        r["device_id"]: DeviceCheckpoint(
            r["device_id"], r["status"], r["last_seen"], r["last_failure_kind"], r["last_failure"],
            r["last_failure_at"], r["consecutive_failures"], orjson.loads(r["counters"]),
            r["source_partition"], r["source_offset"], r["source_topic"], tuple(r["reasons"]), r["link"], r["data"],
            r["last_success"], r["error_ratio"], r["clock_offset_s"], orjson.loads(r["memory"]), r["swept_at"],
        )
        for r in rows
    }


async def save_states(conn: asyncpg.Connection | asyncpg.Pool, states: Iterable[DeviceCheckpoint],
                      transitions: Sequence[DeviceEvent] = ()) -> None:
    """Upsert checkpoints (one per device; the last wins), and record status transitions. A checkpoint
    never moves back on its topic partition: a processor that lost the device's partition in a
    rebalance and saves late cannot overwrite its successor's newer state. At the same position, a
    checkpoint of a later inactivity sweep (`swept_at`) replaces an earlier one.

    One statement over arrays, not `executemany`: a processor checkpoints every device it touched in
    each batch (2,000 a second at 2,000 meters/s), and one statement costs PostgreSQL a fraction of
    as many single-row executions. Reasons travel as one comma-joined text per row (PostgreSQL
    cannot unnest an array of arrays into rows of arrays).
    """
    latest = {s.device_id: s for s in states}
    if not latest and not transitions:
        return
    rows = list(latest.values())
    # Column by column (one comprehension each runs in C), not row by row: 2,000 rows a second.
    columns: list[list[Any]] = [
        [s.device_id for s in rows], [s.status for s in rows], [s.last_seen for s in rows],
        [s.last_failure_kind for s in rows], [s.last_failure for s in rows], [s.last_failure_at for s in rows],
        [s.consecutive_failures for s in rows], [orjson.dumps(s.counters).decode() for s in rows],
        [s.source_partition for s in rows], [s.source_offset for s in rows], [s.source_topic for s in rows],
        [",".join(s.reasons) for s in rows], [s.link for s in rows], [s.data for s in rows],
        [s.last_success for s in rows], [s.error_ratio for s in rows], [s.clock_offset_s for s in rows],
        [orjson.dumps(s.memory).decode() for s in rows], [s.swept_at for s in rows],
    ]
    assert len(columns) == len(_STATE_COLUMNS)
    unnest = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_STATE_TYPES))
    names = ", ".join(_STATE_COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in _STATE_COLUMNS[1:])
    statement = f"""
        INSERT INTO devices.device_state AS s ({names}, updated_at)
        SELECT device_id, status, last_seen, last_failure_kind, last_failure, last_failure_at,
            consecutive_failures, counters::jsonb, source_partition, source_offset, source_topic,
            coalesce(string_to_array(nullif(reasons, ''), ','), '{{}}'), link, data, last_success, error_ratio,
            clock_offset_s,
            memory::jsonb, swept_at, now()
        FROM unnest({unnest}) AS t ({names})
        ON CONFLICT (device_id) DO UPDATE SET {updates}, updated_at = now()
        WHERE s.source_offset IS NULL OR excluded.source_offset IS NULL
            OR s.source_partition IS DISTINCT FROM excluded.source_partition
            OR (s.source_topic IS NOT NULL AND excluded.source_topic IS NOT NULL
                AND s.source_topic <> excluded.source_topic)
            OR excluded.source_offset > s.source_offset
            OR (excluded.source_offset = s.source_offset AND excluded.source_partition = s.source_partition
                AND excluded.swept_at > coalesce(s.swept_at, '-infinity'))
        """
    if not transitions:
        await conn.execute(statement, *columns)
        return
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as c:
            await _save_with_transitions(c, statement, columns, transitions)
    else:
        await _save_with_transitions(conn, statement, columns, transitions)


async def _save_with_transitions(conn: asyncpg.Connection, statement: str, columns: list[list[Any]],
                                 transitions: Sequence[DeviceEvent]) -> None:
    async with conn.transaction():
        if columns[0]:
            await conn.execute(statement, *columns)
        await conn.execute(
            """
            INSERT INTO devices.health_transitions (device_id, ts, status, previous, reasons, reason)
            SELECT device_id, ts, status, previous, coalesce(string_to_array(nullif(reasons, ''), ','), '{}'), reason
            FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[])
                AS t (device_id, ts, status, previous, reasons, reason)
            ON CONFLICT DO NOTHING
            """,
            [e.device_id for e in transitions], [_dt(e.ts_ms) for e in transitions],
            [e.status.value for e in transitions], [e.previous.value for e in transitions],
            [",".join(e.reasons) for e in transitions], [e.reason for e in transitions],
        )


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


async def registered_device_ids(conn: asyncpg.Connection | asyncpg.Pool,
                                device_ids: Iterable[str] | None = None) -> set[str]:
    """Ids in devices.devices: all of them, or those of `device_ids` that are registered."""
    if device_ids is None:
        rows = await conn.fetch("SELECT id FROM devices.devices")
    else:
        rows = await conn.fetch("SELECT id FROM devices.devices WHERE id = ANY($1::text[])", list(device_ids))
    return {r["id"] for r in rows}


async def registered_or_recent(conn: asyncpg.Connection | asyncpg.Pool, device_ids: Iterable[str],
                               recent_s: float) -> set[str]:
    """Those of `device_ids` that are registered, and every device registered in the last `recent_s`
    seconds: a source that registers several devices at once (a partner) is known for all of them
    after one question, not only for the first that came in."""
    rows = await conn.fetch("SELECT id FROM devices.devices WHERE id = ANY($1::text[])"
                            " OR created_at > now() - make_interval(secs => $2)", list(device_ids), recent_s)
    return {r["id"] for r in rows}


async def replace_modbus_connections(conn: asyncpg.Connection, connections: Sequence[ModbusConnection],
                                     id_prefix: str, organisation_id: UUID | None = None) -> None:
    """Make the connections whose id starts with `id_prefix` exactly `connections`, in one transaction
    (`organisation_id`: as in save_modbus_connections)."""
    connections = validate_connections(connections, await available_profiles(conn))
    async with conn.transaction():
        await conn.execute("DELETE FROM devices.connections WHERE id LIKE $1 AND NOT id = ANY($2::text[])",
                           id_prefix + "%", [c.connection_id for c in connections])
        await _upsert(conn, connections, organisation_id)


async def delete_connections(conn: asyncpg.Connection | asyncpg.Pool, connection_ids: Sequence[str]) -> int:
    """Remove connections and their devices; returns how many connections went."""
    rows = await conn.fetch("DELETE FROM devices.connections WHERE id = ANY($1::text[]) RETURNING id",
                            list(connection_ids))
    return len(rows)


async def count_by_status(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, int]:
    """Registered devices per health status (`unknown` until the device processor has seen one)."""
    rows = await conn.fetch(
        """
        SELECT coalesce(s.status, 'unknown') AS status, count(*) AS n
        FROM devices.devices d LEFT JOIN devices.device_state s ON s.device_id = d.id
        GROUP BY 1 ORDER BY 1
        """
    )
    return {r["status"]: r["n"] for r in rows}
