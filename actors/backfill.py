"""Backfill: the scheduled gap scan, and the consumer of `backfill-requests` that hands each gap to
the source that can send it again.

Scan (every `backfill_scan_s`, the first time FIRST_SCAN_S after start; `meterray backfill` runs it
once): for each device with a backfill window (devices.devices.backfill_window: how far back its
source can resend; a partner's `backfill_window_s`) the half-hours of that window are derived from
the archive as the consumption API derives them, and each gap (a run of half-hours without measured
energy) within the window is published as one request (storage.kafka.backfill).

Consumer (group `meterray-backfill`): a request for a partner device becomes a partners.backfills
row of that device's partner, on the path that carries the quantity (PartnerConfig.backfill_path);
the PartnerActor walks that range under its backfill budget and the readings go the usual way
(readings.raw → device processor → archive). Requests repeat on every scan until the gap is filled,
so a row is made only when no row covering the range (of the same device and quantity, or of the
same partner path: its fetch brings every device) is open, or finished less than SETTLE ago
(storage.postgres.partners.request_backfills). The offset is committed
after the rows are written (actors.consumer_stage).

Sources that cannot resend are not asked: a Modbus register holds only its present value (meterray
reads no meter load profile) and an MQTT gateway publishes only the present. The scan skips such a
device even when someone set a backfill window on it (logged once per device); a request for one
that reaches the topic anyway (an older scan, a device removed or changed meanwhile, a record made
by hand) is dead-lettered with the reason, as is a request for a partner with no path for its quantity.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import ray
from confluent_kafka import Message

from actors.consumer_stage import ConsumerStage, StageHost
from meterray.config import ConfigError
from meterray.consumption import refillable
from meterray.partners import PartnerConfig
from meterray.settings import Settings
from protocols.modbus.profiles import wrap_value
from storage.kafka import backfill, topics
from storage.kafka.producer import AsyncProducer
from storage.postgres import consumption as archive
from storage.postgres import partners as partner_repo
from storage.secrets import SecretKeyError, cipher

log = logging.getLogger(__name__)

GROUP_ID = "meterray-backfill"
ACTIVE_IMPORT = "1-0:1.8.0"
RESENDING_PROTOCOLS = frozenset({partner_repo.PROTOCOL})  # sources a backfill request can be handed to
FIRST_SCAN_S = 30.0  # after start: the processors have caught up with what arrived while the runtime was down
# A backfill that finished is not asked for again for this long: its readings may still be on their way
# to the archive (the partner actor marks it done once Kafka took them), and a partner that had nothing
# for the range will not have it minutes later. After it, a gap still there is asked for again.
SETTLE = timedelta(hours=1)


async def find_gaps(conn: asyncpg.Connection | asyncpg.Pool, settings: Settings, now: datetime,
                    quantity: str = ACTIVE_IMPORT) -> tuple[list[backfill.BackfillRequest], list[str]]:
    """A request for each gap within the backfill window of each device whose source can resend, and
    the devices with a window whose source cannot (not asked)."""
    now_ms = archive.to_ms(now)
    requests: list[backfill.BackfillRequest] = []
    cannot: list[str] = []
    for device in await archive.metered_devices(conn):
        assert device.backfill_window is not None
        if device.protocol not in RESENDING_PROTOCOLS:
            cannot.append(device.device_id)
            continue
        window_ms = archive.to_ms(archive.from_ms(0) + device.backfill_window)
        _, derived = await archive.device_consumption(
            conn, device, quantity, device.timezone or settings.default_timezone, now_ms - window_ms, now_ms,
            now_ms, wrap_value(device.profile, quantity))
        requests += [
            backfill.BackfillRequest(device.device_id, device.protocol, quantity, _iso(g.start_ms), _iso(g.end_ms),
                                     g.intervals, g.method, now.astimezone(timezone.utc).isoformat())
            for g in refillable(derived.gaps, window_ms, now_ms)]
    return requests, cannot


def _iso(ms: int) -> str:
    return archive.from_ms(ms).isoformat()


class BackfillCore(ConsumerStage):
    role = "backfill"
    max_batch = 500

    def __init__(self, settings: Settings, pool: asyncpg.Pool, producer: AsyncProducer, member: str,
                 consumer_config: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings, GROUP_ID, topics.BACKFILL_REQUESTS, member, producer, consumer_config)
        self._settings = settings
        self._pool = pool
        self._cipher = cipher(settings)
        self._scan: asyncio.Task[None] | None = None
        self._cannot_logged: set[str] = set()
        self.scans = 0
        self.gaps_requested = 0  # requests the scans published
        self.last_scan_at: float | None = None
        self.last_scan_ms: float | None = None  # how long the last scan took
        self.last_scan_error: str | None = None
        self.backfills_created = 0
        self.already_asked = 0  # requests an open or recently finished backfill covered

    async def start(self) -> None:
        await super().start()
        if self._scan is None:
            self._scan = asyncio.create_task(self._scan_forever(), name="backfill-scan")

    async def stop(self) -> None:
        if self._scan is not None:
            self._scan.cancel()
            await asyncio.gather(self._scan, return_exceptions=True)
        await super().stop()

    # The scan ------------------------------------------------------------------------------------

    async def _scan_forever(self) -> None:
        interval = self._settings.backfill_scan_s
        await asyncio.sleep(min(FIRST_SCAN_S, interval))
        while True:
            started = time.monotonic()
            try:
                await self.scan_once()
            except Exception as err:  # PostgreSQL or Kafka away: every gap is still there at the next scan
                self.last_scan_error = f"{type(err).__name__}: {err}"
                log.warning("backfill scan failed (%s); next scan in %.0f s", self.last_scan_error, interval)
            await asyncio.sleep(max(0.0, started + interval - time.monotonic()))

    async def scan_once(self) -> list[backfill.BackfillRequest]:
        started = time.perf_counter()
        requests, cannot = await find_gaps(self._pool, self._settings, datetime.now(timezone.utc))
        for device_id in sorted(set(cannot) - self._cannot_logged):
            log.warning("device %s has a backfill window but its source cannot send readings again (only %s can);"
                        " its gaps are only estimated", device_id, ", ".join(sorted(RESENDING_PROTOCOLS)),
                        extra={"device_id": device_id})
        self._cannot_logged.update(cannot)
        if requests:
            await self._producer.send_many(backfill.messages(self._settings, requests))
        self.scans += 1
        self.gaps_requested += len(requests)
        self.last_scan_at = time.time()
        self.last_scan_ms = round((time.perf_counter() - started) * 1000, 1)
        self.last_scan_error = None
        return requests

    # The consumer --------------------------------------------------------------------------------

    async def handle(self, messages: Sequence[Message]) -> None:
        decoded: list[tuple[Message, backfill.BackfillRequest]] = []
        refused: list[tuple[Message, str]] = []
        for m in messages:
            try:
                decoded.append((m, backfill.decode(m.value())))
            except ValueError as err:
                refused.append((m, f"not a backfill request: {err}"))
        partner_of = await partner_repo.partners_of(self._pool, sorted({r.device_id for _, r in decoded}))
        configs: dict[str, PartnerConfig | str] = {}
        gaps: list[partner_repo.GapBackfill] = []
        for m, r in decoded:
            gap_or_reason = await self._gap(r, partner_of.get(r.device_id), configs)
            if isinstance(gap_or_reason, str):
                refused.append((m, gap_or_reason))
            else:
                gaps.append(gap_or_reason)
        await self.send_dead_letters(refused)
        if not gaps:
            return
        async with self._pool.acquire() as conn:
            ids = await partner_repo.request_backfills(conn, gaps, SETTLE)
        for g, new in zip(gaps, ids, strict=True):
            if new is not None:
                log.info("backfill %d: partner %s, path %s, %s %s [%s, %s)", new, g.partner_id, g.path, g.device_id,
                         g.quantity, g.since.isoformat(), g.until.isoformat(), extra={"device_id": g.device_id})
        created = sum(i is not None for i in ids)
        self.backfills_created += created
        self.already_asked += len(ids) - created

    async def _gap(self, r: backfill.BackfillRequest, partner_id: str | None,
                   configs: dict[str, PartnerConfig | str]) -> partner_repo.GapBackfill | str:
        """The backfill row a request asks for, or why there is none (the dead letter's reason)."""
        if partner_id is None:
            return (f"device {r.device_id!r} ({r.protocol}) has no source that can send readings again: only a "
                    f"partner's devices can be backfilled (a Modbus or MQTT meter's register holds only its present "
                    f"value), or the device is no longer registered")
        if partner_id not in configs:
            try:
                stored = await partner_repo.get_partner(self._pool, partner_id, self._cipher)
                configs[partner_id] = stored.config if stored else f"partner {partner_id!r} was removed"
            except (ConfigError, SecretKeyError) as err:
                configs[partner_id] = f"partner {partner_id!r} cannot be read ({err})"
        config = configs[partner_id]
        if isinstance(config, str):
            return config
        path = config.backfill_path(r.quantity)
        if path is None:
            return f"partner {partner_id!r} has no readings path that can carry {r.quantity}"
        try:
            since, until = datetime.fromisoformat(r.start), datetime.fromisoformat(r.end)
        except ValueError as err:
            return f"bad range [{r.start!r}, {r.end!r}): {err}"
        if since.tzinfo is None or until.tzinfo is None or since >= until:
            return f"bad range [{r.start!r}, {r.end!r}): times with a UTC offset, start before end"
        return partner_repo.GapBackfill(partner_id, path.name, r.device_id, r.quantity, since, until)

    async def ping(self) -> dict[str, object]:
        if self._scan is not None and self._scan.done() and not self._scan.cancelled():
            raise RuntimeError(f"backfill scan died: {self._scan.exception()!r}")
        return {**await super().ping(), "scans": self.scans, "gaps_requested": self.gaps_requested,
                "last_scan_at": self.last_scan_at, "last_scan_ms": self.last_scan_ms,
                "last_scan_error": self.last_scan_error,
                "backfills_created": self.backfills_created, "already_asked": self.already_asked}


@ray.remote(num_cpus=0, max_restarts=0)
class BackfillActor(StageHost):
    """Ray actor around BackfillCore; the supervisor recreates it when it dies."""

    core_class = BackfillCore
