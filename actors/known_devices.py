"""Which device ids are registered, cached for a consuming stage.

A record for a device that is not in `devices.devices` is dead-lettered ("unknown device ...")
rather than given a state and an archive of its own. Checking costs nothing in the common case:
the ids are cached; a miss asks PostgreSQL about the missing ids, at most once per
`min_refresh_s`, so a stream of unknown ids cannot turn into a query per message. A device
registered less than `min_refresh_s` before its first record can still be refused once; a
registered device only reaches a shard after the supervisor has read it, later than that.
The whole set is reloaded every `full_reload_s`, so a deleted device is forgotten in time. A miss
also loads every device registered in the last RECENT_S: a partner registers all its devices in one
transaction and they start reporting within the same second, and asking only for the first one's id
would refuse the others' first records.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import asyncpg

from storage.postgres import devices as device_repo

# A miss also learns every device registered this recently: devices registered together (a partner's)
# are all known after the first of them is asked about, so the rest are not refused within min_refresh_s.
RECENT_S = 60.0


class KnownDevices:
    def __init__(self, pool: asyncpg.Pool, min_refresh_s: float = 1.0, full_reload_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = pool
        self._min_refresh_s = min_refresh_s
        self._full_reload_s = full_reload_s
        self._clock = clock
        self._ids: set[str] = set()
        self._loaded_at: float | None = None
        self._asked_at: float | None = None
        self.queries = 0

    async def unknown(self, device_ids: Iterable[str]) -> set[str]:
        """The ids of `device_ids` that are not registered (as far as the cache can tell)."""
        now = self._clock()
        if self._loaded_at is None or now - self._loaded_at >= self._full_reload_s:
            self._ids = await device_repo.registered_device_ids(self._pool)
            self._loaded_at = self._asked_at = now
            self.queries += 1
        missing = set(device_ids) - self._ids
        if missing and (self._asked_at is None or now - self._asked_at >= self._min_refresh_s):
            self._asked_at = now
            self.queries += 1
            found = await device_repo.registered_or_recent(self._pool, missing, RECENT_S)
            self._ids |= found
            missing -= found
        return missing
