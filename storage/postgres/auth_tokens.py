"""Refresh tokens of the `auth` schema: families, rotation and reuse detection (RFC 9700 §4.14.2).

Only SHA-256 digests are stored. A refresh takes the presented token's row FOR UPDATE, so two
concurrent refreshes with one token cannot both succeed: the second finds it used, which is reuse.
"""
from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

import asyncpg

from storage.postgres.auth import Db


class Rotation(enum.Enum):
    ROTATED = "rotated"
    UNKNOWN = "unknown"  # never issued (or deleted)
    EXPIRED = "expired"
    REUSED = "reused"  # used or revoked before: the family is revoked now


@dataclass(frozen=True, slots=True)
class RotationResult:
    outcome: Rotation
    user_id: uuid.UUID | None = None


async def start_family(db: Db, token_hash: bytes, user_id: uuid.UUID, ttl_s: int) -> uuid.UUID:
    family = uuid.uuid4()
    await db.execute(
        "INSERT INTO auth.refresh_tokens (token_hash, family_id, user_id, expires_at)"
        " VALUES ($1, $2, $3, now() + make_interval(secs => $4))", token_hash, family, user_id, ttl_s)
    return family


async def rotate(db: asyncpg.Pool, old_hash: bytes, new_hash: bytes, ttl_s: int) -> RotationResult:
    async with db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT family_id, user_id, used_at, revoked_at, expires_at <= now() AS expired"
            " FROM auth.refresh_tokens WHERE token_hash = $1 FOR UPDATE", old_hash)
        if row is None:
            return RotationResult(Rotation.UNKNOWN)
        if row["used_at"] is not None or row["revoked_at"] is not None:
            await _revoke_family(conn, row["family_id"], "reuse detected")
            return RotationResult(Rotation.REUSED, row["user_id"])
        if row["expired"]:
            return RotationResult(Rotation.EXPIRED, row["user_id"])
        await conn.execute("UPDATE auth.refresh_tokens SET used_at = now() WHERE token_hash = $1", old_hash)
        # The successor never outlives the family's first login by more than one TTL per refresh; a family
        # idle longer than the TTL ends.
        await conn.execute(
            "INSERT INTO auth.refresh_tokens (token_hash, family_id, user_id, expires_at)"
            " VALUES ($1, $2, $3, now() + make_interval(secs => $4))", new_hash, row["family_id"], row["user_id"],
            ttl_s)
        return RotationResult(Rotation.ROTATED, row["user_id"])


async def _revoke_family(conn: Db, family_id: uuid.UUID, reason: str) -> None:
    await conn.execute(
        "UPDATE auth.refresh_tokens SET revoked_at = now(), revoke_reason = $2"
        " WHERE family_id = $1 AND revoked_at IS NULL", family_id, reason)


async def revoke(db: Db, token_hash: bytes, reason: str) -> bool:
    """Logout: the token's whole family (this login on every device it was refreshed on). False: unknown."""
    family = await db.fetchval("SELECT family_id FROM auth.refresh_tokens WHERE token_hash = $1", token_hash)
    if family is None:
        return False
    await _revoke_family(db, family, reason)
    return True


async def family_state(db: Db, token_hash: bytes) -> list[asyncpg.Record]:
    """Every token of the family `token_hash` belongs to, oldest first (for operators and tests)."""
    return await db.fetch(
        "SELECT used_at, revoked_at, revoke_reason FROM auth.refresh_tokens WHERE family_id ="
        " (SELECT family_id FROM auth.refresh_tokens WHERE token_hash = $1) ORDER BY issued_at, used_at NULLS LAST",
        token_hash)


async def delete_expired(db: Db, older_than_s: int = 86_400) -> int:
    n = await db.fetchval(
        "WITH d AS (DELETE FROM auth.refresh_tokens WHERE expires_at < now() - make_interval(secs => $1)"
        " RETURNING 1) SELECT count(*) FROM d", older_than_s)
    return int(n)
