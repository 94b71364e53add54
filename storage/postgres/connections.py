"""Queries of `/api/v1/connections`: Modbus and MQTT connections as one list, owned by organisations,
versioned (devices.connection_versions, migration 0015).

Saving goes through the save functions every other writer uses (storage.postgres.devices
`save_modbus_connections`, storage.postgres.mqtt `save_mqtt_connections`: one way to store a
connection, checked by the same models), inside one transaction that also records the owner, the
devices' names and the new version. Their triggers NOTIFY the supervisor at commit, as for
`meterray register`.

Scope: `organisation_id` with `every_organisation` False sees that organisation's connections only
(None sees none); `every_organisation` True (platform staff) sees all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from meterray.config import ConfigError
from meterray.connections import ConnectionDoc, Kind
from meterray.mqtt_config import connection_dict, stored_connection
from storage.postgres import devices as device_repo
from storage.postgres import mqtt as mqtt_repo
from storage.postgres.partners import _conn


class ConflictError(Exception):
    """The request conflicts with what is stored (an id or a unit id taken, a change meanwhile);
    `problems` says each, phrased for a person."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Scope:
    organisation_id: UUID | None
    every_organisation: bool = False

    def sees(self, owner: UUID | None) -> bool:
        return self.every_organisation or (owner is not None and owner == self.organisation_id)


@dataclass(frozen=True, slots=True)
class StoredConnection:
    connection_id: str
    kind: Kind
    organisation_id: UUID | None
    version: int | None  # None: never changed through the API (registered by `meterray register`, SQL)
    updated_at: datetime
    enabled: bool
    document: dict[str, Any]  # meterray.connections' document shape
    problems: list[str] = field(default_factory=list)  # a stored row today's rules refuse: why


_PAGE = """
    SELECT id, kind FROM (
        SELECT id, 'modbus_tcp' AS kind, organisation_id FROM devices.connections
        UNION ALL SELECT id, 'mqtt', organisation_id FROM devices.mqtt_connections) c
    WHERE ($1::text IS NULL OR id > $1) AND ($3::text IS NULL OR kind = $3)
        AND ($4::boolean OR organisation_id = $5::uuid)
    ORDER BY id LIMIT $2
"""


async def list_connections(pool: asyncpg.Pool | asyncpg.Connection, scope: Scope, after: str | None, limit: int,
                           kind: Kind | None = None) -> list[StoredConnection]:
    """A page in id order (keyset: the ids after `after`), both kinds unless `kind`."""
    rows = await pool.fetch(_PAGE, after, limit, kind, scope.every_organisation, scope.organisation_id)
    return await _load(pool, [r["id"] for r in rows if r["kind"] == "modbus_tcp"],
                       [r["id"] for r in rows if r["kind"] == "mqtt"])


async def get_connection(pool: asyncpg.Pool | asyncpg.Connection, connection_id: str,
                         scope: Scope) -> StoredConnection | None:
    """The connection, or None when there is none the scope may see (another organisation's is None too)."""
    found = await _load(pool, [connection_id], [connection_id])
    return found[0] if found and scope.sees(found[0].organisation_id) else None


async def _load(pool: asyncpg.Pool | asyncpg.Connection, modbus_ids: list[str],
                mqtt_ids: list[str]) -> list[StoredConnection]:
    out: list[StoredConnection] = []
    if modbus_ids:
        rows = await pool.fetch(
            """
            SELECT c.id, c.host, c.port, c.poll_interval_s, c.timeout_s, c.organisation_id, c.updated_at, c.enabled,
                   coalesce(json_agg(json_build_object('device_id', d.id, 'unit_id', d.unit_id, 'profile', d.profile,
                                                       'name', d.name) ORDER BY d.unit_id)
                            FILTER (WHERE d.id IS NOT NULL), '[]')::text AS devices
            FROM devices.connections c LEFT JOIN devices.devices d ON d.connection_id = c.id
            WHERE c.id = ANY($1::text[]) GROUP BY c.id
            """, modbus_ids)
        for r in rows:
            doc = {"kind": "modbus_tcp", "connection_id": r["id"], "host": r["host"], "port": r["port"],
                   "poll_interval_s": r["poll_interval_s"], "timeout_s": r["timeout_s"],
                   "devices": orjson.loads(r["devices"])}
            out.append(StoredConnection(r["id"], "modbus_tcp", r["organisation_id"], None, r["updated_at"],
                                        r["enabled"], doc))
    if mqtt_ids:
        rows = await pool.fetch(
            """
            SELECT id, host, port, topic_filter, share_group, subscribers, payload_format, mapping::text AS mapping,
                   auto_register, inflight, session_expiry_s, organisation_id, updated_at, enabled
            FROM devices.mqtt_connections WHERE id = ANY($1::text[])
            """, mqtt_ids)
        for r in rows:
            data = {k: r[k] for k in ("host", "port", "topic_filter", "share_group", "subscribers", "payload_format",
                                      "auto_register", "inflight", "session_expiry_s")}
            data["connection_id"] = r["id"]
            data["mapping"] = orjson.loads(r["mapping"])
            if data["payload_format"] != "json":
                data.pop("mapping")
            conn, problems = stored_connection(data)
            doc = {"kind": "mqtt", **(data if conn is None else connection_dict(conn))}
            out.append(StoredConnection(r["id"], "mqtt", r["organisation_id"], None, r["updated_at"], r["enabled"],
                                        doc, list(problems)))
    ids = [c.connection_id for c in out]
    versions = {r["connection_id"]: r["version"] for r in await pool.fetch(
        "SELECT connection_id, max(version) AS version FROM devices.connection_versions"
        " WHERE connection_id = ANY($1::text[]) GROUP BY connection_id", ids)} if ids else {}
    out = [StoredConnection(c.connection_id, c.kind, c.organisation_id, versions.get(c.connection_id), c.updated_at,
                            c.enabled, c.document, c.problems) for c in out]
    return sorted(out, key=lambda c: c.connection_id)


async def save_connection(pool: asyncpg.Pool | asyncpg.Connection, doc: ConnectionDoc, owner: UUID | None,
                          changed_by: UUID | None, scope: Scope, expect_new: bool,
                          if_version: int | None | bool = False) -> StoredConnection:
    """Store a checked document as a new version; all or nothing.

    `expect_new` True: the id must be free in both kinds (else FileExistsError → 409); False: it must
    exist within `scope` (else LookupError → 404) with the same kind. `if_version` (anything but False):
    the stored version must still be this one (a read-modify-write: else ConflictError). A device id
    registered elsewhere (another connection, MQTT, a partner) is a ConflictError: saving would move it.
    """
    cid = doc.connection_id
    async with _conn(pool) as conn, conn.transaction():
        # One writer per id at a time, whichever kind: the check below and the insert are one step.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('meterray.connection:' || $1))", cid)
        existing = await _load(conn, [cid], [cid])
        current = existing[0] if existing else None
        if expect_new and current is not None:
            raise FileExistsError(f"connection id {cid!r} is taken; PUT /api/v1/connections/{cid} changes a "
                                  "connection of yours, or choose another id")
        if not expect_new:
            if current is None or not scope.sees(current.organisation_id):
                raise LookupError(f"no connection {cid!r}")
            if current.kind != doc.kind:
                raise ConfigError([f"kind: connection {cid!r} is {current.kind}, a connection cannot change kind "
                                   "(create a new one and delete this one)"], "connection")
            if if_version is not False and current.version != if_version:
                raise ConflictError([f"connection {cid!r} changed meanwhile (version {current.version}, expected "
                                     f"{if_version}); read it again and retry"])
        if doc.modbus is not None:
            await _check_devices_free(conn, cid, doc.device_ids)
            try:
                await device_repo.save_modbus_connections(conn, [doc.modbus])
            except asyncpg.UniqueViolationError as err:  # unit ids swapped between two devices in one change
                raise ConflictError([f"connection {cid!r}: {err.detail or err}; move the unit ids in two steps"]) \
                    from None
            await conn.execute("UPDATE devices.connections SET organisation_id = $2 WHERE id = $1"
                               " AND organisation_id IS DISTINCT FROM $2", cid, owner)
            ids = doc.device_ids
            await conn.execute(
                """
                UPDATE devices.devices d SET organisation_id = $1, name = n.name
                FROM unnest($2::text[], $3::text[]) AS n (id, name)
                WHERE d.id = n.id AND (d.organisation_id IS DISTINCT FROM $1 OR d.name <> n.name)
                """, owner, ids, [doc.names.get(i, i) for i in ids])
        else:
            assert doc.mqtt is not None
            await mqtt_repo.save_mqtt_connections(conn, [doc.mqtt])
            await conn.execute("UPDATE devices.mqtt_connections SET organisation_id = $2 WHERE id = $1"
                               " AND organisation_id IS DISTINCT FROM $2", cid, owner)
        await _add_version(conn, cid, doc.kind, doc.document(), owner, changed_by)
        stored = await _load(conn, [cid], [cid])
        return stored[0]


async def delete_connection(pool: asyncpg.Pool | asyncpg.Connection, connection_id: str, scope: Scope,
                            changed_by: UUID | None) -> bool:
    """Remove a connection (a Modbus connection's devices with it); its versions stay, with a deletion mark."""
    async with _conn(pool) as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('meterray.connection:' || $1))", connection_id)
        found = await _load(conn, [connection_id], [connection_id])
        if not found or not scope.sees(found[0].organisation_id):
            return False
        current = found[0]
        if current.kind == "modbus_tcp":
            await device_repo.delete_connections(conn, [connection_id])
        else:
            await mqtt_repo.delete_mqtt_connections(conn, [connection_id])
        await _add_version(conn, connection_id, current.kind, None, current.organisation_id, changed_by)
        return True


async def versions(pool: asyncpg.Pool | asyncpg.Connection, connection_id: str, scope: Scope) -> list[asyncpg.Record]:
    """Every version of a connection the scope may see (also of a deleted one), oldest first."""
    return await pool.fetch(
        "SELECT version, kind, config IS NULL AS deleted, config::text AS config, organisation_id, changed_by,"
        " created_at FROM devices.connection_versions WHERE connection_id = $1 AND ($2::boolean OR organisation_id"
        " = $3::uuid) ORDER BY version", connection_id, scope.every_organisation, scope.organisation_id)


async def _check_devices_free(conn: asyncpg.Connection, connection_id: str, device_ids: list[str]) -> None:
    taken = await conn.fetch("SELECT id, protocol FROM devices.devices WHERE id = ANY($1::text[])"
                             " AND connection_id IS DISTINCT FROM $2 ORDER BY id", device_ids, connection_id)
    if taken:
        raise ConflictError([f"device id {r['id']!r} is already registered ({r['protocol']}, not on this connection);"
                             " choose another id, or remove it where it is first" for r in taken])


async def _add_version(conn: asyncpg.Connection, connection_id: str, kind: str, document: dict[str, Any] | None,
                       owner: UUID | None, changed_by: UUID | None) -> None:
    await conn.execute(
        """
        INSERT INTO devices.connection_versions (connection_id, version, kind, config, organisation_id, changed_by)
        SELECT $1, coalesce(max(version), 0) + 1, $2, $3::jsonb, $4, $5
        FROM devices.connection_versions WHERE connection_id = $1
        """, connection_id, kind, None if document is None else orjson.dumps(document).decode(), owner, changed_by)
