"""Whole databases: the tests and benchmarks each work in a fresh one beside the main database."""
from __future__ import annotations

import asyncio
import re
from urllib.parse import urlsplit, urlunsplit

import asyncpg

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# DROP DATABASE ... WITH (FORCE) cannot end a session our role does not own: an autovacuum worker
# that happens to be on the database refuses it (InsufficientPrivilege) for the moment it runs.
_DROP_ATTEMPTS, _DROP_PAUSE_S = 20, 0.5


def _check(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"database name {name!r} must be lower-case letters, digits and underscores")


async def _drop(conn: asyncpg.Connection, name: str) -> None:
    for attempt in range(_DROP_ATTEMPTS):
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except (asyncpg.InsufficientPrivilegeError, asyncpg.ObjectInUseError):
            if attempt == _DROP_ATTEMPTS - 1:
                raise
            await asyncio.sleep(_DROP_PAUSE_S)


async def recreate_database(dsn: str, name: str) -> str:
    """Drop and create database `name` on the server of `dsn`; returns the DSN that points at it."""
    _check(name)
    conn = await asyncpg.connect(dsn)
    try:
        await _drop(conn, name)
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def drop_database(dsn: str, name: str) -> None:
    """Drop database `name` on the server of `dsn` if it exists (connections to it are closed)."""
    _check(name)
    conn = await asyncpg.connect(dsn)
    try:
        await _drop(conn, name)
    finally:
        await conn.close()
