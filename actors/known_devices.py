"""Which device ids are registered, cached for a consuming stage.

A record for a device that is not in `devices.devices` is dead-lettered ("unknown device ...")
rather than given a state and an archive of its own. Checking costs nothing in the common case:
the ids are cached; a miss asks PostgreSQL about the missing ids, at most one query per call
(a consumed batch), and an id already found missing is asked again at most once per
`min_refresh_s`, so a stream of unknown ids cannot turn into a query per message. An id never
asked before is always asked: a device that an MQTT shard registered (auto-registration) just
before producing its first record is found, never refused by a stale miss of another id.
A miss also learns every device registered in the last RECENT_S: a partner registers all its
devices in one transaction and they start reporting within the same second.
The whole set is reloaded every `full_reload_s`, so a deleted device is forgotten in time.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import asyncpg

from storage.postgres import devices as device_repo

# A miss also learns every device registered this recently: devices registered together (a partner's)
# are all known after the first of them is asked about.
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
        self._missing_at: dict[str, float] = {}  # id → when PostgreSQL last said it is not registered
        self.queries = 0

    async def unknown(self, device_ids: Iterable[str]) -> set[str]:
        """The ids of `device_ids` that are not registered (as far as the cache can tell)."""
        now = self._clock()
        missing = set(device_ids)
        if self._loaded_at is None or now - self._loaded_at >= self._full_reload_s:
            self._ids = await device_repo.registered_device_ids(self._pool)
            self._loaded_at = now
            self._missing_at.clear()
            self.queries += 1
            missing -= self._ids
            self._missing_at.update(dict.fromkeys(missing, now))
            return missing
        missing -= self._ids
        ask = {d for d in missing if now - self._missing_at.get(d, -1e18) >= self._min_refresh_s}
        if ask:
            self.queries += 1
            found = await device_repo.registered_or_recent(self._pool, ask, RECENT_S)
            self._ids |= found
            missing -= found
            if len(self._missing_at) > 100_000:  # a flood of distinct unknown ids: forget old answers
                self._missing_at = {d: t for d, t in self._missing_at.items() if now - t < self._min_refresh_s}
            self._missing_at.update(dict.fromkeys(ask - found, now))
        return missing

    def remember(self, device_ids: Iterable[str]) -> None:
        """Ids the caller has just registered itself."""
        self._ids |= set(device_ids)
        for d in device_ids:
            self._missing_at.pop(d, None)
