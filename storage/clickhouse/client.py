"""One way to ClickHouse for embedded chDB and for a server: clickhouse-connect's `get_client`.

clickhouse-connect (>= 0.9, the chdb backend) returns the same `Client` for `dsn="chdb:///path"` (an
in-process chDB engine on that data directory) and for `http(s)://user:pass@host:8123`, so every query
and insert here is one piece of code for both. chDB's limits (clickhouse_connect/driver/_chdbclient.py):
one engine path per process, no async client. So the calls are synchronous and callers run them in a
worker thread, and only one process (the ch-writer actor) may open a given chdb:// directory.
"""
from __future__ import annotations

from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client


def connect(url: str) -> Client:
    """A client for `url` (chdb:///abs/path or http(s)://...). Tables are always named with their database,
    so the client needs none (a server's `default` database always exists)."""
    options: dict[str, Any] = {}
    if url.startswith("http"):
        # A write or a query that hangs must fail and be retried, not hold the stage forever.
        options = {"connect_timeout": 5, "send_receive_timeout": 60}
    return clickhouse_connect.get_client(dsn=url, **options)


def is_embedded(url: str) -> bool:
    return url.startswith("chdb:")
