"""The known-device cache on the real PostgreSQL, with a clock the test moves."""
from __future__ import annotations

import asyncpg

from actors.known_devices import KnownDevices
from meterray.settings import Settings
from tests.actors.conftest import register


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_misses_ask_postgres_at_most_once_per_interval_and_find_new_devices(actors_db: Settings) -> None:
    await register(actors_db.pg_dsn, "kd-1")
    clock = Clock()
    async with asyncpg.create_pool(actors_db.pg_dsn, min_size=1, max_size=1) as pool:
        known = KnownDevices(pool, min_refresh_s=1.0, full_reload_s=300.0, clock=clock)
        assert await known.unknown({"kd-1", "kd-2"}) == {"kd-2"}
        assert known.queries == 1  # the first call loads every id; the miss is not asked again at once
        for _ in range(100):  # a stream of unknown ids is not a query per message
            assert await known.unknown({"kd-1", "kd-2", "kd-ghost"}) == {"kd-2", "kd-ghost"}
        assert known.queries == 2  # kd-ghost, never asked before, was asked once
        await register(actors_db.pg_dsn, "kd-new")  # registered just before its first record (auto-registration)
        assert await known.unknown({"kd-new", "kd-2"}) == {"kd-2"}  # found at once: never asked before
        assert known.queries == 3
        await register(actors_db.pg_dsn, "kd-2")
        assert await known.unknown({"kd-2"}) == {"kd-2"} and known.queries == 3  # a known miss waits its interval
        clock.now += 1.0
        assert await known.unknown({"kd-1", "kd-2", "kd-ghost"}) == {"kd-ghost"}
        assert known.queries == 4
        assert await known.unknown({"kd-2"}) == set() and known.queries == 4  # now cached
        conn = await asyncpg.connect(actors_db.pg_dsn)
        await conn.execute("DELETE FROM devices.devices WHERE id = 'kd-1'")
        await conn.close()
        clock.now += 300.0
        assert await known.unknown({"kd-1"}) == {"kd-1"}  # the full reload forgets deleted devices


async def test_a_miss_learns_every_device_registered_with_it(actors_db: Settings) -> None:
    clock = Clock()
    async with asyncpg.create_pool(actors_db.pg_dsn, min_size=1, max_size=1) as pool:
        known = KnownDevices(pool, min_refresh_s=1.0, full_reload_s=300.0, clock=clock)
        assert await known.unknown({"kd-batch-0"}) == {"kd-batch-0"}
        await register(actors_db.pg_dsn, "kd-batch-1", "kd-batch-2", "kd-batch-3")  # one source, one transaction
        clock.now += 1.0
        assert await known.unknown({"kd-batch-1"}) == set() and known.queries == 2
        # The others reach the stage within the same second: known, no refusal, no further query.
        assert await known.unknown({"kd-batch-2", "kd-batch-3"}) == set() and known.queries == 2
