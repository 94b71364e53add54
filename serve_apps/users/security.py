"""Password hashing (argon2id) and refresh-token secrets.

argon2-cffi's PasswordHasher defaults are RFC 9106 §4's second recommended option (argon2id, t=3,
m=64 MiB, p=4). Hashing takes tens of milliseconds of CPU by design, so it runs in a worker thread and
never blocks the replica's event loop.
"""
from __future__ import annotations

import asyncio
import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
# Verified against when the e-mail is unknown, so an unknown account costs as much time as a wrong
# password (no account enumeration by timing).
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> tuple[bool, bool]:
    """(matches, needs rehash). A None hash (unknown account) still spends one verification."""
    def verify() -> tuple[bool, bool]:
        try:
            _hasher.verify(password_hash or _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return False, False
        return password_hash is not None, password_hash is not None and _hasher.check_needs_rehash(password_hash)
    return await asyncio.to_thread(verify)


def new_refresh_token() -> tuple[str, bytes]:
    """(token for the client, its SHA-256 for the database): 256 random bits, so a plain hash suffices."""
    token = secrets.token_urlsafe(32)
    return token, refresh_digest(token)


def refresh_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
