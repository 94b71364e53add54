"""What the `devices` topic publishes of devices.devices (storage/kafka/device_topic.py)."""
from __future__ import annotations

from uuid import UUID

import asyncpg

from meterray.device_info import DeviceInfo


async def load_catalog(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, DeviceInfo]:
    rows = await conn.fetch("SELECT id, name, protocol, profile, organisation_id, timezone FROM devices.devices")
    return {r["id"]: DeviceInfo(r["id"], r["name"], r["protocol"], r["profile"], r["organisation_id"], r["timezone"])
            for r in rows}


async def device_owner(conn: asyncpg.Connection | asyncpg.Pool, device_id: str) -> tuple[bool, UUID | None]:
    """(whether the device is registered, the organisation owning it)."""
    row = await conn.fetchrow("SELECT organisation_id FROM devices.devices WHERE id = $1", device_id)
    return (row is not None, row["organisation_id"] if row is not None else None)
