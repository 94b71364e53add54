"""Dependencies shared by the HTTP apps: the PostgreSQL pool, opened on first use per replica."""
from __future__ import annotations

import asyncio
from typing import Annotated

import asyncpg
from fastapi import Depends, Request


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
                                                           command_timeout=30)
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


async def get_db(request: Request) -> asyncpg.Pool:
    holder: PoolHolder = request.app.state.db
    return await holder.get()


Db = Annotated[asyncpg.Pool, Depends(get_db)]
