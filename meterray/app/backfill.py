"""`meterray backfill`: run the gap scan once, now (the runtime's backfill actor runs it every
METERRAY_BACKFILL_SCAN_S; see actors/backfill.py): a request on `backfill-requests` for each gap within
the backfill window of each device whose source can send readings again.
"""
from __future__ import annotations

from datetime import datetime, timezone

import asyncpg

from actors.backfill import ACTIVE_IMPORT, find_gaps
from meterray.settings import Settings
from storage.kafka import backfill
from storage.kafka.producer import AsyncProducer


async def request_backfill(settings: Settings, now: datetime | None = None,
                           quantity: str = ACTIVE_IMPORT) -> list[backfill.BackfillRequest]:
    """Publish a request for each gap within each device's backfill window; returns what was published."""
    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        requests, _ = await find_gaps(conn, settings, now or datetime.now(timezone.utc), quantity)
    finally:
        await conn.close()
    if requests:
        async with AsyncProducer(settings.kafka_bootstrap) as producer:
            await producer.send_many(backfill.messages(settings, requests))
    return requests
