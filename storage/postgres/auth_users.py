"""User management queries (auth.users, migration 0010), each scoped to an organisation in its WHERE clause:
`organisation_id` is the caller's (meterray.access.Scope), None for platform staff (every user). A user
outside the scope is not found, exactly like a user that does not exist."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from storage.postgres.auth import AlreadyRegistered, Db

_COLUMNS = "u.id, u.email, u.role, u.organisation_id, u.disabled, u.created_at"
_IN_SCOPE = "($1::uuid IS NULL OR u.organisation_id = $1)"


@dataclass(frozen=True, slots=True)
class ManagedUser:
    user_id: uuid.UUID
    email: str
    role: str
    organisation_id: uuid.UUID | None
    disabled: bool
    created_at: datetime


class UnknownOrganisation(Exception):
    """The organisation a new user should belong to does not exist."""


def _user(row: asyncpg.Record) -> ManagedUser:
    return ManagedUser(*row.values())


async def list_users(db: Db, *, organisation_id: uuid.UUID | None, after: str | None, limit: int,
                     of_organisation: uuid.UUID | None = None) -> list[ManagedUser]:
    """Users in e-mail order (keyset paging: those after the e-mail `after`), within the scope;
    `of_organisation` narrows further (platform staff looking at one organisation)."""
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM auth.users u WHERE {_IN_SCOPE} AND ($2::text IS NULL OR u.email > $2)"
        " AND ($4::uuid IS NULL OR u.organisation_id = $4) ORDER BY u.email LIMIT $3",
        organisation_id, after, limit, of_organisation)
    return [_user(r) for r in rows]


async def get_user(db: Db, user_id: uuid.UUID, *, organisation_id: uuid.UUID | None) -> ManagedUser | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM auth.users u WHERE {_IN_SCOPE} AND u.id = $2",
                            organisation_id, user_id)
    return None if row is None else _user(row)


async def create_user(db: Db, email: str, password_hash: str, role: str,
                      user_organisation: uuid.UUID | None) -> ManagedUser:
    """Raises AlreadyRegistered('email') or UnknownOrganisation. The caller has checked that it may
    create this role in this organisation (meterray.access.may_assign)."""
    try:
        row = await db.fetchrow(
            "INSERT INTO auth.users AS u (email, password_hash, organisation_id, role) VALUES ($1, $2, $3, $4)"
            f" RETURNING {_COLUMNS}", email, password_hash, user_organisation, role)
    except asyncpg.UniqueViolationError:
        raise AlreadyRegistered("email") from None
    except asyncpg.ForeignKeyViolationError:
        raise UnknownOrganisation(str(user_organisation)) from None
    assert row is not None
    return _user(row)


async def update_user(db: asyncpg.Pool, user_id: uuid.UUID, *, organisation_id: uuid.UUID | None,
                      role: str | None, disabled: bool | None) -> ManagedUser | None:
    """Change a user's role and/or disable (enable) it; None when not found within the scope. Disabling
    revokes every refresh token of the user in the same transaction: no new access token can be had
    (login and refresh also check `disabled`); access tokens already issued expire within their TTL."""
    async with db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"UPDATE auth.users u SET role = coalesce($3, u.role), disabled = coalesce($4, u.disabled)"
            f" WHERE {_IN_SCOPE} AND u.id = $2 RETURNING {_COLUMNS}", organisation_id, user_id, role, disabled)
        if row is None:
            return None
        if disabled:
            await conn.execute(
                "UPDATE auth.refresh_tokens SET revoked_at = now(), revoke_reason = 'user disabled'"
                " WHERE user_id = $1 AND revoked_at IS NULL", user_id)
    return _user(row)


async def organisation_exists(db: Db, organisation_id: uuid.UUID) -> bool:
    return bool(await db.fetchval("SELECT EXISTS (SELECT 1 FROM auth.organisations WHERE id = $1)", organisation_id))


async def create_organisation(db: Db, inn: str, name: str, inn_verified_by: str = "checksum") -> uuid.UUID:
    """An organisation created by platform staff (the demo's), or the existing one with this INN."""
    org_id = await db.fetchval(
        "INSERT INTO auth.organisations (inn, name, inn_verified_by) VALUES ($1, $2, $3)"
        " ON CONFLICT (inn) DO UPDATE SET name = coalesce(auth.organisations.name, excluded.name) RETURNING id",
        inn, name, inn_verified_by)
    assert isinstance(org_id, uuid.UUID)
    return org_id


async def ensure_user(db: Db, email: str, password_hash: str, role: str,
                      user_organisation: uuid.UUID | None) -> uuid.UUID:
    """Create the user, or make an existing one with this e-mail exactly this (password, role, organisation,
    enabled): for the demo's admin, whose password is a setting."""
    user_id = await db.fetchval(
        "INSERT INTO auth.users (email, password_hash, organisation_id, role) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (email) DO UPDATE SET password_hash = excluded.password_hash, role = excluded.role,"
        " organisation_id = excluded.organisation_id, disabled = false RETURNING id",
        email, password_hash, user_organisation, role)
    assert isinstance(user_id, uuid.UUID)
    return user_id
