"""Queries of the `auth` schema (migration 0010): organisations, their supply contracts, users and
login throttling. Refresh tokens are in auth_tokens.py, the external-check cache in auth_cache.py."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

import asyncpg

Db: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


@dataclass(frozen=True, slots=True)
class NewOrganisation:
    inn: str
    inn_verified_by: str  # 'api-fns' | 'checksum'
    kind: str | None = None
    name: str | None = None
    short_name: str | None = None
    kpp: str | None = None
    ogrn: str | None = None
    address: str | None = None
    register_status: str | None = None


@dataclass(frozen=True, slots=True)
class NewContract:
    contract_number: str
    verified_by: str  # 'gkh' | 'unverified'
    contract_guid: str | None = None
    contract_state: str | None = None
    version_status: str | None = None
    supplier_name: str | None = None


@dataclass(frozen=True, slots=True)
class Credentials:
    user_id: uuid.UUID
    organisation_id: uuid.UUID | None
    role: str
    password_hash: str
    disabled: bool


@dataclass(frozen=True, slots=True)
class UserView:
    user_id: uuid.UUID
    email: str
    role: str
    created_at: datetime
    organisation_id: uuid.UUID | None
    inn: str | None
    organisation_name: str | None
    kpp: str | None
    ogrn: str | None
    address: str | None
    inn_verified_by: str | None


class AlreadyRegistered(Exception):
    """A unique key is taken; `field` is the registration field that names it ('email' or 'inn')."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


async def taken(db: Db, email: str, inn: str) -> str | None:
    """'email' or 'inn' when that one is already registered (checked before spending external quota)."""
    row = await db.fetchrow(
        "SELECT EXISTS (SELECT 1 FROM auth.users WHERE email = $1) AS email,"
        " EXISTS (SELECT 1 FROM auth.organisations WHERE inn = $2) AS inn", email, inn)
    assert row is not None
    return "email" if row["email"] else "inn" if row["inn"] else None


async def register(db: asyncpg.Pool, org: NewOrganisation, contract: NewContract, email: str, password_hash: str,
                   role: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The organisation, its contract and its first user, all or nothing; (user id, organisation id)."""
    async with db.acquire() as conn, conn.transaction():
        try:
            org_id = await conn.fetchval(
                "INSERT INTO auth.organisations (inn, kind, name, short_name, kpp, ogrn, address, register_status,"
                " inn_verified_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                org.inn, org.kind, org.name, org.short_name, org.kpp, org.ogrn, org.address, org.register_status,
                org.inn_verified_by)
            await conn.execute(
                "INSERT INTO auth.supply_contracts (organisation_id, contract_number, verified_by, contract_guid,"
                " contract_state, version_status, supplier_name) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                org_id, contract.contract_number, contract.verified_by, contract.contract_guid,
                contract.contract_state, contract.version_status, contract.supplier_name)
            user_id = await conn.fetchval(
                "INSERT INTO auth.users (email, password_hash, organisation_id, role) VALUES ($1, $2, $3, $4)"
                " RETURNING id", email, password_hash, org_id, role)
        except asyncpg.UniqueViolationError as err:  # a concurrent registration won the race
            raise AlreadyRegistered("email" if "email" in (err.constraint_name or "") else "inn") from None
    return user_id, org_id


async def credentials(db: Db, email: str) -> Credentials | None:
    row = await db.fetchrow(
        "SELECT id, organisation_id, role, password_hash, disabled FROM auth.users WHERE email = $1", email)
    return None if row is None else Credentials(row["id"], row["organisation_id"], row["role"],
                                                row["password_hash"], row["disabled"])


async def principal_of(db: Db, user_id: uuid.UUID) -> Credentials | None:
    """The user's current role and organisation (a refresh re-reads them: a changed role takes effect)."""
    row = await db.fetchrow(
        "SELECT id, organisation_id, role, password_hash, disabled FROM auth.users WHERE id = $1", user_id)
    return None if row is None else Credentials(row["id"], row["organisation_id"], row["role"],
                                                row["password_hash"], row["disabled"])


async def update_password_hash(db: Db, user_id: uuid.UUID, password_hash: str) -> None:
    """argon2 parameters raised since the hash was made: store the rehash (argon2-cffi check_needs_rehash)."""
    await db.execute("UPDATE auth.users SET password_hash = $2 WHERE id = $1", user_id, password_hash)


async def user_view(db: Db, user_id: uuid.UUID) -> UserView | None:
    row = await db.fetchrow(
        "SELECT u.id, u.email, u.role, u.created_at, u.organisation_id, o.inn, o.name, o.kpp, o.ogrn, o.address,"
        " o.inn_verified_by FROM auth.users u LEFT JOIN auth.organisations o ON o.id = u.organisation_id"
        " WHERE u.id = $1 AND NOT u.disabled", user_id)
    return None if row is None else UserView(*row.values())


async def contracts_of(db: Db, organisation_id: uuid.UUID) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT contract_number, verified_by, contract_state, version_status, supplier_name, checked_at"
        " FROM auth.supply_contracts WHERE organisation_id = $1 ORDER BY contract_number", organisation_id)


# --- login throttling: a fixed window of failures per key, shared by every replica ---

async def login_retry_after(db: Db, keys: dict[str, int], window_s: int) -> float | None:
    """Seconds until a login may be tried again when any key has reached its limit ({key: max failures})."""
    wait = await db.fetchval(
        "SELECT max(extract(epoch FROM window_start + make_interval(secs => $3) - now()))"
        " FROM auth.login_failures f JOIN unnest($1::text[], $2::int[]) AS l(key, lim) USING (key)"
        " WHERE f.failures >= l.lim AND f.window_start > now() - make_interval(secs => $3)",
        list(keys), list(keys.values()), window_s)
    return None if wait is None else max(1.0, float(wait))


async def record_login_failure(db: Db, keys: list[str], window_s: int) -> None:
    await db.execute(
        "INSERT INTO auth.login_failures (key, window_start, failures) SELECT k, now(), 1 FROM unnest($1::text[]) k"
        " ON CONFLICT (key) DO UPDATE SET"
        "  failures = CASE WHEN auth.login_failures.window_start > now() - make_interval(secs => $2)"
        "                  THEN auth.login_failures.failures + 1 ELSE 1 END,"
        "  window_start = CASE WHEN auth.login_failures.window_start > now() - make_interval(secs => $2)"
        "                  THEN auth.login_failures.window_start ELSE now() END",
        keys, window_s)


async def clear_login_failures(db: Db, key: str) -> None:
    await db.execute("DELETE FROM auth.login_failures WHERE key = $1", key)
