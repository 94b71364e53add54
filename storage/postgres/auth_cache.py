"""The cache of external check results (`auth.check_cache`): definitive answers only, with a TTL."""
from __future__ import annotations

from typing import Any

import orjson

from storage.postgres.auth import Db


async def cached(db: Db, service: str, key: str) -> dict[str, Any] | None:
    raw = await db.fetchval(
        "SELECT result::text FROM auth.check_cache WHERE service = $1 AND key = $2 AND expires_at > now()",
        service, key)
    return None if raw is None else dict(orjson.loads(raw))


async def remember(db: Db, service: str, key: str, result: dict[str, Any], ttl_s: int) -> None:
    if ttl_s <= 0:
        return
    await db.execute(
        "INSERT INTO auth.check_cache (service, key, result, expires_at)"
        " VALUES ($1, $2, $3::jsonb, now() + make_interval(secs => $4))"
        " ON CONFLICT (service, key) DO UPDATE SET result = EXCLUDED.result, fetched_at = now(),"
        " expires_at = EXCLUDED.expires_at", service, key, orjson.dumps(result).decode(), ttl_s)
