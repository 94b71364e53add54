"""The web cabinet's queries, each scoped to what one principal may see: the devices of its organisation
(`organisation_id`), or every device for platform staff (`everything=True`). A device of another
organisation is simply not found, so the cabinet answers it like a device that does not exist."""
from __future__ import annotations

from uuid import UUID

import asyncpg

# The scope as a WHERE clause on devices.devices d: $1 the organisation, $2 "platform staff: all".
_SCOPE = "($2::boolean OR d.organisation_id = $1::uuid)"


def _like(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, its own wildcards taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def device_page(conn: asyncpg.Connection | asyncpg.Pool, organisation_id: UUID | None, everything: bool, *,
                      after: str | None, limit: int, status: str | None, search: str | None) -> list[asyncpg.Record]:
    """Devices in id order after `after` (keyset paging), at most `limit`, with their health; `status` keeps one
    health state, `search` those whose id or name contains it (case-insensitive)."""
    return await conn.fetch(
        f"""
        SELECT d.id, d.name, d.protocol, d.profile, coalesce(s.status, 'unknown') AS status,
               coalesce(s.reasons, '{{}}') AS reasons, s.last_seen
        FROM devices.devices d LEFT JOIN devices.device_state s ON s.device_id = d.id
        WHERE {_SCOPE} AND ($3::text IS NULL OR d.id > $3)
          AND ($5::text IS NULL OR coalesce(s.status, 'unknown') = $5)
          AND ($6::text IS NULL OR d.id ILIKE $6 OR coalesce(d.name, '') ILIKE $6)
        ORDER BY d.id
        LIMIT $4
        """,
        organisation_id, everything, after, limit, status, None if not search else _like(search),
    )


async def device_count(conn: asyncpg.Connection | asyncpg.Pool, organisation_id: UUID | None, everything: bool, *,
                       status: str | None, search: str | None) -> int:
    return int(await conn.fetchval(
        f"""
        SELECT count(*) FROM devices.devices d LEFT JOIN devices.device_state s ON s.device_id = d.id
        WHERE {_SCOPE} AND ($3::text IS NULL OR coalesce(s.status, 'unknown') = $3)
          AND ($4::text IS NULL OR d.id ILIKE $4 OR coalesce(d.name, '') ILIKE $4)
        """,
        organisation_id, everything, status, None if not search else _like(search),
    ))


async def status_counts(conn: asyncpg.Connection | asyncpg.Pool, organisation_id: UUID | None,
                        everything: bool) -> dict[str, int]:
    rows = await conn.fetch(
        f"SELECT coalesce(s.status, 'unknown') AS status, count(*) AS n FROM devices.devices d"
        f" LEFT JOIN devices.device_state s ON s.device_id = d.id WHERE {_SCOPE} GROUP BY 1",
        organisation_id, everything,
    )
    return {r["status"]: r["n"] for r in rows}


async def metered_ids(conn: asyncpg.Connection | asyncpg.Pool, organisation_id: UUID | None, everything: bool,
                      quantity: str, limit: int) -> list[str]:
    """Devices (at most `limit`, in id order) that have a current value of `quantity`: those with a register
    to derive consumption from."""
    rows = await conn.fetch(
        f"SELECT d.id FROM devices.devices d WHERE {_SCOPE} AND EXISTS (SELECT 1 FROM monitoring.readings_current c"
        f" WHERE c.device_id = d.id AND c.quantity = $3) ORDER BY d.id LIMIT $4",
        organisation_id, everything, quantity, limit,
    )
    return [r["id"] for r in rows]


async def recent_transitions(conn: asyncpg.Connection | asyncpg.Pool, organisation_id: UUID | None,
                             everything: bool, limit: int) -> list[asyncpg.Record]:
    """The latest health changes of the visible devices, newest first."""
    return await conn.fetch(
        f"SELECT t.device_id, t.ts, t.status, t.previous, t.reasons FROM devices.health_transitions t"
        f" JOIN devices.devices d ON d.id = t.device_id WHERE {_SCOPE} ORDER BY t.ts DESC LIMIT $3",
        organisation_id, everything, limit,
    )
