"""`meterray backfill`: ask sources that can resend data for the gaps in their devices' half-hours.

For every device with a backfill window (devices.devices.backfill_window: how far back its source can
resend readings) the half-hours of that window are derived from the archive as the consumption API
derives them; each gap (a run of half-hours without measured energy) within the window becomes a
request on the `backfill-requests` topic (storage.kafka.backfill). Modbus meters have no window:
a register holds only its present value, so their gaps are only estimated. Run it periodically
(cron, or a scheduler); every run requests what is still missing.
"""
from __future__ import annotations

from datetime import datetime, timezone

import asyncpg

from meterray.consumption import refillable
from meterray.settings import Settings
from protocols.modbus.profiles import wrap_value
from storage.kafka import backfill
from storage.kafka.producer import AsyncProducer
from storage.postgres import consumption as repo

ACTIVE_IMPORT = "1-0:1.8.0"


async def request_backfill(settings: Settings, now: datetime | None = None,
                           quantity: str = ACTIVE_IMPORT) -> list[backfill.BackfillRequest]:
    """Publish a request for each gap within each device's backfill window; returns what was published."""
    now = now or datetime.now(timezone.utc)
    now_ms = repo.to_ms(now)
    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        requests = []
        for device in await repo.metered_devices(conn):
            assert device.backfill_window is not None
            window_ms = repo.to_ms(repo.from_ms(0) + device.backfill_window)
            _, derived = await repo.device_consumption(
                conn, device, quantity, device.timezone or settings.default_timezone, now_ms - window_ms, now_ms,
                now_ms, wrap_value(device.profile, quantity))
            requests += [
                backfill.BackfillRequest(device.device_id, device.protocol, quantity, _iso(g.start_ms), _iso(g.end_ms),
                                         g.intervals, g.method, now.astimezone(timezone.utc).isoformat())
                for g in refillable(derived.gaps, window_ms, now_ms)]
    finally:
        await conn.close()
    if requests:
        async with AsyncProducer(settings.kafka_bootstrap) as producer:
            await producer.send_many(backfill.messages(settings, requests))
    return requests


def _iso(ms: int) -> str:
    return repo.from_ms(ms).isoformat()
