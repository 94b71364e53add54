"""Whole databases: the tests and benchmarks each work in a fresh one beside the main database."""
from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

import asyncpg

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


async def recreate_database(dsn: str, name: str) -> str:
    """Drop and create database `name` on the server of `dsn`; returns the DSN that points at it."""
    if not _NAME.match(name):
        raise ValueError(f"database name {name!r} must be lower-case letters, digits and underscores")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def drop_database(dsn: str, name: str) -> None:
    """Drop database `name` on the server of `dsn` if it exists (connections to it are closed)."""
    if not _NAME.match(name):
        raise ValueError(f"database name {name!r} must be lower-case letters, digits and underscores")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
