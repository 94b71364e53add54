"""Dependencies shared by the HTTP apps: the PostgreSQL pool, opened on first use per replica."""
from __future__ import annotations

import asyncio
from typing import Annotated

import asyncpg
from fastapi import Depends

from meterray.settings import Settings


class _NoResetConnection(asyncpg.Connection):
    """The API's connections keep no session state (no LISTEN, SET, advisory locks or open cursors), so
    a connection going back to the pool needs no reset query: one PostgreSQL round trip less per query.
    asyncpg still ends any open transaction (Connection.reset: an overridden get_reset_query does the rest)."""

    def get_reset_query(self) -> str:
        return ""


class PoolHolder:
    def __init__(self, dsn: str, max_size: int = 5) -> None:
        self._dsn, self._max_size = dsn, max_size
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=self._max_size,
                                                           command_timeout=30, connection_class=_NoResetConnection)
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


# One pool per replica process. Serve ships the FastAPI app to the replica by value, so state set on
# `app.state` in the deployment's constructor would land on a different object than the one serving.
_db: PoolHolder | None = None


def configure_db(dsn: str, max_size: int = 5) -> PoolHolder:
    global _db
    _db = PoolHolder(dsn, max_size)
    return _db


async def get_db() -> asyncpg.Pool:
    if _db is None:
        raise RuntimeError("configure_db() was not called in this replica")
    return await _db.get()


Db = Annotated[asyncpg.Pool, Depends(get_db)]


_settings: Settings | None = None


def configure_settings(settings: Settings) -> None:
    global _settings
    _settings = settings


def get_settings() -> Settings:
    if _settings is None:
        raise RuntimeError("configure_settings() was not called in this replica")
    return _settings


AppSettings = Annotated[Settings, Depends(get_settings)]
