"""Versioned SQL migrations: `migrations/NNNN_name.sql`, each applied once, in order, in a transaction."""
from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import asyncpg

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x6D657465  # one migrator at a time across processes


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(folder.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise ValueError(f"migration file {path.name} must be named NNNN_lower_snake.sql")
        found.append(Migration(int(m.group(1)), path.stem, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations share a version number in {folder}")
    return found


async def migrate(dsn: str, *, profiles: Collection[str] | None = None) -> list[str]:
    """Apply pending migrations; returns the names applied (empty when up to date).

    `profiles`: the meter profile names the code knows (protocols.modbus.profiles.PROFILES, passed
    in by the caller: storage does not import protocols); `devices.profiles` is synced to them.
    """
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS public.meterray_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM public.meterray_migrations")}
        applied = []
        for m in load_migrations():
            if m.version in done:
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO public.meterray_migrations (version, name) VALUES ($1, $2)", m.version, m.name
                )
            applied.append(m.name)
        if profiles is not None:
            from storage.postgres.devices import sync_profiles
            from storage.postgres.mqtt import MQTT_PROFILE

            # Devices reporting over MQTT have the one profile 'mqtt' (migration 0005), whatever meters the code knows.
            await sync_profiles(conn, [*profiles, MQTT_PROFILE])
        return applied
    finally:
        await conn.close()
