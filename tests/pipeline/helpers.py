"""Small HTTP and SQL helpers for the pipeline tests."""
from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import asyncpg


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
    except (urllib.error.URLError, ConnectionError):
        return 0, None


def sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def read_topic(bootstrap: str, topic: str, timeout_s: float = 5.0) -> list[tuple[bytes | None, bytes]]:
    """Every message of `topic` from the beginning (key, value), read by a throw-away consumer group."""
    import time
    import uuid

    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-reader-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False, "enable.partition.eof": True})
    c.subscribe([topic])
    out: list[tuple[bytes | None, bytes]] = []
    eof: set[int] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                eof.add(m.partition())
                if len(eof) == len(c.assignment()) and c.assignment():
                    break
                continue
            out.append((m.key(), m.value()))
    finally:
        c.close()
    return out


def all_devices(api: str, page_size: int = 100) -> list[dict[str, Any]]:
    """Every device of `GET /api/v1/devices`, following `next_cursor` page by page."""
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = f"limit={page_size}" + (f"&cursor={cursor}" if cursor else "")
        status, body = http("GET", f"{api}/api/v1/devices?{query}")
        assert status == 200, body
        out += body["devices"]
        cursor = body["next_cursor"]
        if cursor is None:
            return out
