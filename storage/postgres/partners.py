"""Queries of the `partners` schema: configurations (versioned, secrets sealed), cursors, devices, backfills.

A partner's document is stored in clear with every secret masked; the secrets are sealed apart
(storage/secrets.py). Saving registers the partner's devices in devices.devices (protocol
`partner_http`), so the device processor knows them and the monitoring API lists them.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson
from cryptography.fernet import Fernet

from meterray.config import ConfigError
from meterray.partners import PartnerConfig, validate_partner
from storage.secrets import SecretKeyError, seal, unseal

CHANNEL = "meterray_partners_changed"  # NOTIFY'd by triggers on partners.partners / partners.backfills
PROTOCOL = "partner_http"
PROFILE = "partner"


@dataclass(frozen=True, slots=True)
class StoredPartner:
    config: PartnerConfig
    version: int
    updated_at: datetime


async def save_partner(pool: asyncpg.Pool | asyncpg.Connection, doc: dict[str, Any], f: Fernet,
                       expect_new: bool | None = None) -> tuple[StoredPartner, bool]:
    """Validate and store a partner (a new version if it exists); returns it and whether it was new.

    `expect_new`: True refuses an existing id (POST), False a missing one (PUT). Raises ConfigError
    (every problem listed) or LookupError / FileExistsError for the expectation."""
    async with _conn(pool) as conn, conn.transaction():
        pid = doc.get("partner_id") if isinstance(doc, dict) else None
        row = await conn.fetchrow("SELECT version, config::text AS config, secrets FROM partners.partners"
                                  " WHERE id = $1 FOR UPDATE", pid) if isinstance(pid, str) else None
        if expect_new is True and row is not None:
            raise FileExistsError(f"partner {pid!r} exists; PUT /api/v1/partners/{pid} changes it")
        if expect_new is False and row is None:
            raise LookupError(f"no partner {pid!r}")
        config = validate_partner(doc, _readable(row, f))
        await _check_devices(conn, config)
        sealed = seal(f, config.secrets())
        version = (row["version"] + 1) if row else 1
        if row is None:
            # A deleted partner of the same id keeps its history: continue its version numbers.
            last = await conn.fetchval("SELECT max(version) FROM partners.partner_versions WHERE partner_id = $1",
                                       config.partner_id)
            version = (last or 0) + 1
        stored = await conn.fetchrow(
            """
            INSERT INTO partners.partners (id, version, config, secrets, enabled) VALUES ($1, $2, $3::jsonb, $4, $5)
            ON CONFLICT (id) DO UPDATE SET version = excluded.version, config = excluded.config,
                secrets = excluded.secrets, enabled = excluded.enabled, updated_at = now()
            RETURNING updated_at
            """,
            config.partner_id, version, orjson.dumps(config.public()).decode(), sealed, config.enabled)
        await conn.execute("INSERT INTO partners.partner_versions (partner_id, version, config, secrets)"
                           " VALUES ($1, $2, $3::jsonb, $4)", config.partner_id, version,
                           orjson.dumps(config.public()).decode(), sealed)
        await _sync_devices(conn, config)
        return StoredPartner(config, version, stored["updated_at"]), row is None


async def _check_devices(conn: asyncpg.Connection, config: PartnerConfig) -> None:
    ids = [d.device_id for d in config.devices]
    taken = await conn.fetch(
        """
        SELECT d.id, d.protocol, p.partner_id FROM devices.devices d
        LEFT JOIN partners.devices p ON p.device_id = d.id
        WHERE d.id = ANY($1::text[]) AND p.partner_id IS DISTINCT FROM $2
        """, ids, config.partner_id)
    if taken:
        raise ConfigError([f"partner {config.partner_id!r}: devices: device id {r['id']!r} is already registered "
                           f"({'partner ' + repr(r['partner_id']) if r['partner_id'] else r['protocol']})"
                           for r in taken], "partner")


async def _sync_devices(conn: asyncpg.Connection, config: PartnerConfig) -> None:
    keep = [d.device_id for d in config.devices]
    await conn.execute(
        "DELETE FROM devices.devices WHERE id IN (SELECT device_id FROM partners.devices"
        " WHERE partner_id = $1 AND NOT device_id = ANY($2::text[]))", config.partner_id, keep)
    await conn.execute("DELETE FROM partners.devices WHERE partner_id = $1", config.partner_id)
    window = None if config.backfill_window_s is None else timedelta(seconds=config.backfill_window_s)
    await conn.executemany(
        "INSERT INTO devices.devices (id, name, protocol, profile, backfill_window) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (id) DO UPDATE SET name = excluded.name, backfill_window = excluded.backfill_window",
        [(d.device_id, f"{config.partner_id}/{d.external_id}", PROTOCOL, PROFILE, window) for d in config.devices])
    await conn.executemany(
        "INSERT INTO partners.devices (partner_id, external_id, device_id) VALUES ($1, $2, $3)",
        [(config.partner_id, d.external_id, d.device_id) for d in config.devices])


async def delete_partner(pool: asyncpg.Pool | asyncpg.Connection, partner_id: str) -> bool:
    """Remove a partner, its devices, cursors and backfills; its versions stay (with a deletion mark)."""
    async with _conn(pool) as conn, conn.transaction():
        # Its devices first: the partner's row takes its device list with it (ON DELETE CASCADE).
        await conn.execute("DELETE FROM devices.devices WHERE protocol = $2 AND id IN"
                           " (SELECT device_id FROM partners.devices WHERE partner_id = $1)", partner_id, PROTOCOL)
        version = await conn.fetchval("DELETE FROM partners.partners WHERE id = $1 RETURNING version", partner_id)
        if version is None:
            return False
        await conn.execute("INSERT INTO partners.partner_versions (partner_id, version, config) VALUES ($1, $2, NULL)",
                           partner_id, version + 1)
        return True


async def get_partner(pool: asyncpg.Pool | asyncpg.Connection, partner_id: str, f: Fernet) -> StoredPartner | None:
    row = await pool.fetchrow("SELECT config::text AS config, secrets, version, updated_at FROM partners.partners"
                              " WHERE id = $1", partner_id)
    return None if row is None else _stored(row, f)


async def list_partners(pool: asyncpg.Pool | asyncpg.Connection,
                        f: Fernet) -> tuple[list[StoredPartner], dict[str, str]]:
    """Every stored partner that can be read, and for each one that cannot, why."""
    return await _load(pool, f, enabled_only=False)


async def load_runnable(pool: asyncpg.Pool | asyncpg.Connection,
                        f: Fernet) -> tuple[list[StoredPartner], dict[str, str]]:
    """The enabled partners the code can run, and for each one it cannot, why (a secret the key cannot
    open, a document a later version of the rules refuses): one bad partner never stops the others."""
    return await _load(pool, f, enabled_only=True)


def _readable(row: asyncpg.Record | None, f: Fernet) -> PartnerConfig | None:
    """The stored configuration, or None when it cannot be read any more (then a new document must
    carry its secrets: there is nothing to keep)."""
    try:
        return _stored(row, f).config if row is not None else None
    except (ConfigError, SecretKeyError):
        return None


async def _load(pool: asyncpg.Pool | asyncpg.Connection, f: Fernet,
                enabled_only: bool) -> tuple[list[StoredPartner], dict[str, str]]:
    rows = await pool.fetch("SELECT id, config::text AS config, secrets, version, updated_at FROM partners.partners"
                            " WHERE enabled OR NOT $1 ORDER BY id", enabled_only)
    good: list[StoredPartner] = []
    problems: dict[str, str] = {}
    for r in rows:
        try:
            good.append(_stored(r, f))
        except (ConfigError, SecretKeyError) as err:
            problems[r["id"]] = str(err)
    return good, problems


def _stored(row: asyncpg.Record, f: Fernet) -> StoredPartner:
    return StoredPartner(validate_partner(orjson.loads(row["config"]), unseal(f, row["secrets"])), row["version"],
                         row.get("updated_at"))


async def versions(pool: asyncpg.Pool | asyncpg.Connection, partner_id: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT version, config IS NULL AS deleted, created_at FROM partners.partner_versions"
                            " WHERE partner_id = $1 ORDER BY version", partner_id)


async def get_cursor(pool: asyncpg.Pool | asyncpg.Connection, partner_id: str, path: str) -> dict[str, Any] | None:
    raw = await pool.fetchval("SELECT cursor::text FROM partners.cursors WHERE partner_id = $1 AND path = $2",
                              partner_id, path)
    return None if raw is None else dict(orjson.loads(raw))


async def list_cursors(pool: asyncpg.Pool | asyncpg.Connection, partner_id: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT path, cursor::text AS cursor, updated_at FROM partners.cursors"
                            " WHERE partner_id = $1 ORDER BY path", partner_id)


async def save_cursor(pool: asyncpg.Pool | asyncpg.Connection, partner_id: str, path: str,
                      cursor: dict[str, Any]) -> None:
    await pool.execute(
        """
        INSERT INTO partners.cursors (partner_id, path, cursor) VALUES ($1, $2, $3::jsonb)
        ON CONFLICT (partner_id, path) DO UPDATE SET cursor = excluded.cursor, updated_at = now()
        """, partner_id, path, orjson.dumps(cursor).decode())


async def add_backfill(pool: asyncpg.Pool | asyncpg.Connection, partner_id: str, path: str, since: datetime,
                       until: datetime) -> int:
    return int(await pool.fetchval("INSERT INTO partners.backfills (partner_id, path, since, until)"
                                   " VALUES ($1, $2, $3, $4) RETURNING id", partner_id, path, since, until))


async def partners_of(pool: asyncpg.Pool | asyncpg.Connection, device_ids: list[str]) -> dict[str, str]:
    """Device id → the partner it belongs to, for those of `device_ids` that belong to one."""
    rows = await pool.fetch("SELECT device_id, partner_id FROM partners.devices WHERE device_id = ANY($1::text[])",
                            device_ids)
    return {r["device_id"]: r["partner_id"] for r in rows}


@dataclass(frozen=True, slots=True)
class GapBackfill:
    """A gap of one device's quantity for its partner to send again: partners.backfills row to be."""

    partner_id: str
    path: str
    device_id: str
    quantity: str
    since: datetime
    until: datetime


async def request_backfills(conn: asyncpg.Connection, gaps: list[GapBackfill],
                            settle: timedelta) -> list[int | None]:
    """Store a pending backfill for each gap, in one transaction; for each, the new row's id, or None
    when a row already covers its range — one of the same device and quantity, or one of the same
    partner and path (a path's query names no device: its fetch brings every device's readings, so a
    partner outage that left the same gap in all its meters is fetched once) — and that row is still
    open (pending, running) or finished less than `settle` ago (its readings may still be on their way
    to the archive, or the partner had nothing: asking again at once would only repeat it). A lock per
    partner keeps two consumers (during a rebalance) from both inserting."""
    out: list[int | None] = []
    async with conn.transaction():
        for partner_id in sorted({g.partner_id for g in gaps}):
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('meterray.backfill:' || $1))", partner_id)
        for g in gaps:
            out.append(await conn.fetchval(
                """
                INSERT INTO partners.backfills (partner_id, path, since, until, device_id, quantity)
                SELECT $1, $2, $3, $4, $5, $6
                WHERE NOT EXISTS (SELECT 1 FROM partners.backfills b
                                  WHERE (b.device_id = $5 AND b.quantity = $6 OR b.partner_id = $1 AND b.path = $2)
                                    AND b.since <= $3 AND b.until >= $4
                                    AND (b.status IN ('pending', 'running') OR b.updated_at > now() - $7::interval))
                ON CONFLICT DO NOTHING
                RETURNING id
                """, g.partner_id, g.path, g.since, g.until, g.device_id, g.quantity, settle))
    return out


async def open_backfills(pool: asyncpg.Pool | asyncpg.Connection, partner_id: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT id, path, since, until, state::text AS state, pages, records FROM"
                            " partners.backfills WHERE partner_id = $1 AND status IN ('pending', 'running')"
                            " ORDER BY id", partner_id)


async def get_backfill(pool: asyncpg.Pool | asyncpg.Connection, backfill_id: int) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT id, partner_id, path, since, until, status, detail, pages, records,"
                               " device_id, quantity FROM partners.backfills WHERE id = $1", backfill_id)


async def save_backfill(pool: asyncpg.Pool | asyncpg.Connection, backfill_id: int, status: str,
                        state: dict[str, Any] | None, pages: int, records: int, detail: str | None = None) -> None:
    await pool.execute("UPDATE partners.backfills SET status = $2, state = $3::jsonb, pages = $4, records = $5,"
                       " detail = $6, updated_at = now() WHERE id = $1", backfill_id, status,
                       None if state is None else orjson.dumps(state).decode(), pages, records, detail)


class _conn:
    """`async with _conn(pool_or_connection) as conn`: a connection either way."""

    def __init__(self, pool: asyncpg.Pool | asyncpg.Connection) -> None:
        self._pool = pool
        self._ctx: Any = None

    async def __aenter__(self) -> asyncpg.Connection:
        if isinstance(self._pool, asyncpg.Pool):
            self._ctx = self._pool.acquire()
            return await self._ctx.__aenter__()
        return self._pool

    async def __aexit__(self, *exc: object) -> None:
        if self._ctx is not None:
            await self._ctx.__aexit__(*exc)
