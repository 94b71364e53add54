"""The `auth` schema's repositories against the real PostgreSQL: refresh-token rotation and reuse
detection, login-failure windows, the external-check cache TTL, and the table's own refusals."""
from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from argon2 import PasswordHasher

from meterray.settings import Settings
from storage.postgres import auth, auth_cache, auth_tokens
from storage.postgres.auth_tokens import Rotation
from tests.fakes import valid_inn

HASH = PasswordHasher(memory_cost=1024, time_cost=1).hash("not-used-here")  # a well-formed argon2id hash


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@pytest.fixture
async def pool(database: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database.pg_dsn, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


async def _user(pool: asyncpg.Pool, inn: str, email: str) -> uuid.UUID:
    user_id, _ = await auth.register(pool, auth.NewOrganisation(inn=inn, inn_verified_by="checksum"),
                                     auth.NewContract("ЭС-1", "unverified"), email, HASH, "customer")
    return user_id


async def test_a_refresh_token_is_used_once_and_its_reuse_revokes_the_whole_family(pool: asyncpg.Pool) -> None:
    user = await _user(pool, valid_inn(9001), "st-rotation@example.ru")
    await auth_tokens.start_family(pool, _digest("t0"), user, 3600)
    first = await auth_tokens.rotate(pool, _digest("t0"), _digest("t1"), 3600)
    assert (first.outcome, first.user_id) == (Rotation.ROTATED, user)
    assert (await auth_tokens.rotate(pool, _digest("t1"), _digest("t2"), 3600)).outcome is Rotation.ROTATED
    # t0 again (stolen and replayed): refused, and t2, the legitimate client's current token, dies with it.
    assert (await auth_tokens.rotate(pool, _digest("t0"), _digest("t3"), 3600)).outcome is Rotation.REUSED
    assert (await auth_tokens.rotate(pool, _digest("t2"), _digest("t4"), 3600)).outcome is Rotation.REUSED
    family = await auth_tokens.family_state(pool, _digest("t2"))
    assert len(family) == 3 and all(r["revoked_at"] is not None for r in family)
    assert (await auth_tokens.rotate(pool, _digest("never"), _digest("t5"), 3600)).outcome is Rotation.UNKNOWN


async def test_two_concurrent_refreshes_with_one_token_cannot_both_succeed(pool: asyncpg.Pool) -> None:
    user = await _user(pool, valid_inn(9002), "st-race@example.ru")
    await auth_tokens.start_family(pool, _digest("r0"), user, 3600)
    results = await asyncio.gather(*(auth_tokens.rotate(pool, _digest("r0"), _digest(f"r{i}"), 3600)
                                     for i in (1, 2)))
    assert sorted(r.outcome.value for r in results) == ["reused", "rotated"]


async def test_expired_and_logged_out_tokens_are_refused(pool: asyncpg.Pool) -> None:
    user = await _user(pool, valid_inn(9003), "st-expiry@example.ru")
    await auth_tokens.start_family(pool, _digest("e0"), user, 3600)
    await pool.execute("UPDATE auth.refresh_tokens SET expires_at = now() - interval '1 s' WHERE token_hash = $1",
                       _digest("e0"))
    assert (await auth_tokens.rotate(pool, _digest("e0"), _digest("e1"), 3600)).outcome is Rotation.EXPIRED
    await auth_tokens.start_family(pool, _digest("l0"), user, 3600)
    assert await auth_tokens.revoke(pool, _digest("l0"), "logout")
    assert not await auth_tokens.revoke(pool, _digest("nobody"), "logout")
    assert (await auth_tokens.rotate(pool, _digest("l0"), _digest("l1"), 3600)).outcome is Rotation.REUSED


async def test_login_failures_count_per_key_within_the_window(pool: asyncpg.Pool) -> None:
    keys = {"account:f@example.ru": 3, "address:192.0.2.1": 5}
    for _ in range(2):
        await auth.record_login_failure(pool, list(keys), 900)
    assert await auth.login_retry_after(pool, keys, 900) is None
    await auth.record_login_failure(pool, list(keys), 900)
    wait = await auth.login_retry_after(pool, keys, 900)
    assert wait is not None and 890 < wait <= 900  # the account's window, not the address's (3 of 5)
    await auth.clear_login_failures(pool, "account:f@example.ru")
    assert await auth.login_retry_after(pool, keys, 900) is None
    # A window that has passed starts again at one.
    await pool.execute("UPDATE auth.login_failures SET window_start = now() - interval '1 hour' WHERE key = ANY($1)",
                       list(keys))
    await auth.record_login_failure(pool, ["address:192.0.2.1"], 900)
    assert await pool.fetchval("SELECT failures FROM auth.login_failures WHERE key = 'address:192.0.2.1'") == 1


async def test_cached_results_expire_after_their_ttl(pool: asyncpg.Pool) -> None:
    await auth_cache.remember(pool, "api-fns/egr", "7728168971", {"found": False, "company": None}, 1)
    assert await auth_cache.cached(pool, "api-fns/egr", "7728168971") == {"found": False, "company": None}
    await pool.execute("UPDATE auth.check_cache SET expires_at = now() WHERE key = '7728168971'")
    assert await auth_cache.cached(pool, "api-fns/egr", "7728168971") is None
    await auth_cache.remember(pool, "api-fns/egr", "ttl-zero", {"found": True}, 0)  # TTL 0: caching off
    assert await auth_cache.cached(pool, "api-fns/egr", "ttl-zero") is None


async def test_a_second_registration_of_an_email_or_inn_is_refused_naming_the_field(pool: asyncpg.Pool) -> None:
    await _user(pool, valid_inn(9004), "st-twice@example.ru")
    with pytest.raises(auth.AlreadyRegistered) as info:
        await _user(pool, valid_inn(9005), "st-twice@example.ru")
    assert info.value.field == "email"
    with pytest.raises(auth.AlreadyRegistered) as info:
        await _user(pool, valid_inn(9004), "st-other@example.ru")
    assert info.value.field == "inn"
    # Nothing of either refused registration stays behind (one transaction each).
    assert await pool.fetchval("SELECT count(*) FROM auth.organisations WHERE inn = $1", valid_inn(9005)) == 0
    assert await auth.taken(pool, "st-twice@example.ru", "0") == "email"
    assert await auth.taken(pool, "new@example.ru", valid_inn(9004)) == "inn"


async def test_the_tables_refuse_what_the_code_never_writes(pool: asyncpg.Pool) -> None:
    org = await pool.fetchval("SELECT organisation_id FROM auth.users WHERE email = 'st-rotation@example.ru'")
    for query, args in [
        ("INSERT INTO auth.users (email, password_hash, organisation_id, role) VALUES ($1, $2, $3, 'customer')",
         ("plain@example.ru", "hunter2", org)),  # not an argon2id hash
        ("INSERT INTO auth.users (email, password_hash, organisation_id, role) VALUES ($1, $2, $3, 'customer')",
         ("Upper@Example.ru", HASH, org)),  # not normalised
        ("INSERT INTO auth.users (email, password_hash, organisation_id, role) VALUES ($1, $2, $3, 'root')",
         ("root@example.ru", HASH, org)),
        ("INSERT INTO auth.users (email, password_hash, role) VALUES ($1, $2, 'customer')",
         ("orphan@example.ru", HASH)),  # only admins have no organisation
        ("INSERT INTO auth.organisations (inn, inn_verified_by) VALUES ($1, 'checksum')", ("12345",)),
    ]:
        with pytest.raises(asyncpg.CheckViolationError):
            await pool.execute(query, *args)
