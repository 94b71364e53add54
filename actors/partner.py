"""PartnerActor: one data partner (HTTP API), one asyncio task per retrieval path, one for backfills.

A path runs on its schedule: each run asks for the window [watermark - overlap, now - lag) page by
page. A page's readings, status and refused records go to Kafka, and only once Kafka confirmed
every record is the cursor saved to PostgreSQL: the window and the next page during a run, the new
watermark at its end. A crash therefore repeats at most the page in flight (same keys downstream:
written once), never skips one; the overlap catches data the partner publishes late.

A failed page (timeout, refused connection, credentials refused, HTTP 5xx after the retries, an
answer that is not the configured format) becomes a failure of each of the partner's devices, on
the same path as a meter's failed poll, and the run resumes from its saved page at the next slot.

Backfills (partners.backfills rows) run beside the live schedule under their own, smaller budget;
a 429's Retry-After pauses both.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import ray

from actors import metrics
from actors.logs import setup_logging
from meterray.backoff import Backoff
from meterray.domain import FailureKind, PollFailure
from meterray.partners import PartnerConfig, PathConfig
from meterray.settings import Settings
from protocols.http.client import HttpFailure, PartnerClient, Pause, RateBudget
from protocols.http.documents import DocumentError, parse
from protocols.http.mapping import Mapped, map_records
from protocols.http.paging import PageState, Window, build_request, next_state
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer, OutMessage, is_permanent
from storage.postgres import partners as repo

log = logging.getLogger(__name__)
BACKFILL_CHECK_S = 2.0
MAX_DLQ_BODY = 64 * 1024


@dataclass(slots=True)
class PathStats:
    runs: int = 0
    pages: int = 0
    records: int = 0
    readings: int = 0
    status_records: int = 0
    refused: int = 0
    failed_pages: int = 0
    last_failure: str | None = None
    last_run_at: float | None = None
    watermark_ms: int | None = None

    def summary(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(slots=True)
class PageOutcome:
    next: PageState | None
    records: int
    mapped: Mapped = field(default_factory=Mapped)


class PartnerCore:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, producer: AsyncProducer) -> None:
        self._settings = settings
        self._pool = pool
        self._producer = producer
        self._raw = settings.topic(topics.READINGS_RAW)
        self._dlq = settings.topic(topics.READINGS_DLQ)
        self.config: PartnerConfig | None = None
        self._client: PartnerClient | None = None
        self._pause = Pause()
        self._live: RateBudget | None = None
        self._backfill_budget: RateBudget | None = None
        self._tasks: dict[str, tuple[PathConfig, asyncio.Task[None]]] = {}
        self._backfill: asyncio.Task[None] | None = None
        self.stats: dict[str, PathStats] = {}
        self.backfill_pages = 0
        self.reconfigured = 0
        self.undelivered = 0

    async def configure(self, config: PartnerConfig) -> dict[str, int]:
        """Run exactly this configuration. Paths whose configuration is unchanged keep running, unless
        something they share changed (address, authentication, budget, devices): then all restart,
        each from its saved cursor."""
        old = self.config
        shared_changed = old is None or old.model_copy(update={"paths": ()}) != config.model_copy(update={"paths": ()})
        wanted = {p.name: p for p in config.paths} if config.enabled else {}
        stop = [n for n, (p, _) in self._tasks.items() if shared_changed or wanted.get(n) != p]
        for name in stop:
            _, task = self._tasks.pop(name)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if shared_changed:
            if self._backfill is not None:
                self._backfill.cancel()
                await asyncio.gather(self._backfill, return_exceptions=True)
                self._backfill = None
            if self._client is not None:
                await self._client.close()
            self._client = PartnerClient(config)
            self._pause = Pause()
            self._live = RateBudget(config.rate.requests_per_minute, self._pause)
            self._backfill_budget = RateBudget(config.rate.backfill_requests_per_minute, self._pause)
        self.config = config
        started = 0
        for name, path in wanted.items():
            if name not in self._tasks:
                self.stats.setdefault(name, PathStats())
                self._tasks[name] = (path, asyncio.create_task(self._run_path(path), name=f"partner-path:{name}"))
                started += 1
        if self._backfill is None and config.enabled:
            self._backfill = asyncio.create_task(self._run_backfills(), name="partner-backfill")
        self.reconfigured += old is not None
        return {"running": len(self._tasks), "started": started, "stopped": len(stop)}

    def check(self) -> None:
        """Raises if a task died, so the supervisor replaces the actor."""
        for name, (_, task) in self._tasks.items():
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"path {name} died: {task.exception()!r}")
        if self._backfill is not None and self._backfill.done() and not self._backfill.cancelled():
            raise RuntimeError(f"backfill task died: {self._backfill.exception()!r}")

    async def stop(self) -> None:
        tasks = [t for _, t in self._tasks.values()] + ([self._backfill] if self._backfill else [])
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._backfill = None
        if self._client is not None:
            await self._client.close()

    # The live schedule --------------------------------------------------------------------------

    async def _run_path(self, path: PathConfig) -> None:
        assert self.config is not None
        pid, st = self.config.partner_id, self.stats[path.name]
        while True:
            started = time.time()
            try:
                await self._run_once(path, st, started)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                # PostgreSQL away (cursor not read or not saved): the next slot resumes from the saved cursor.
                log.warning("%s/%s: cursor store unavailable (%s); retrying at the next slot", pid, path.name, err)
            await asyncio.sleep(max(0.0, started + path.interval_s - time.time()))

    async def _run_once(self, path: PathConfig, st: PathStats, started: float) -> None:
        """One run of the path: resume the saved run (its window and page), or start the next window."""
        assert self.config is not None
        pid = self.config.partner_id
        now_ms = int(started * 1000)
        cursor = await repo.get_cursor(self._pool, pid, path.name) or {
            "watermark": now_ms - int(path.initial_lookback_s * 1000)}
        watermark = int(cursor["watermark"])
        st.watermark_ms = watermark
        run = cursor.get("run")
        if run:  # the run the last actor was in, from its saved page
            window, state = Window(int(run["since"]), int(run["until"])), dict(run["state"])
        else:
            window = Window(max(0, watermark - int(path.overlap_s * 1000)), now_ms - int(path.lag_s * 1000))
            state = {}
        if window.until_ms <= window.since_ms:
            return
        st.runs += 1
        st.last_run_at = started

        async def save(nxt: PageState) -> None:
            await repo.save_cursor(self._pool, pid, path.name, {
                "watermark": watermark, "run": {"since": window.since_ms, "until": window.until_ms, "state": nxt}})

        if await self._walk(path, window, state, self._live, st, save):
            new_wm = max(watermark, window.until_ms)
            await repo.save_cursor(self._pool, pid, path.name, {"watermark": new_wm})
            st.watermark_ms = new_wm

    async def _walk(self, path: PathConfig, window: Window, state: PageState, budget: RateBudget | None,
                    st: PathStats, save: Any) -> bool:
        """Fetch, publish and checkpoint pages until the last; False when a page failed (the saved
        state is where the next attempt starts). The next page is fetched while this one goes to
        Kafka (fetching is read-only); its cursor is saved only after this page's confirmation."""
        pending: asyncio.Task[PageOutcome] | None = asyncio.create_task(self._fetch(path, window, state, budget))
        try:
            for _ in range(path.max_pages):
                assert pending is not None
                try:
                    page = await pending
                except (HttpFailure, DocumentError) as err:
                    pending = None
                    await self._path_failed(path, err, st)
                    return False
                pending = None if page.next is None else asyncio.create_task(
                    self._fetch(path, window, page.next, budget))
                await self._publish(page.mapped, path)
                self._count(page, path, st)
                if page.next is None:
                    return True
                await save(page.next)  # only now: Kafka has every record of this page
                state = page.next
        finally:
            if pending is not None:
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
        log.warning("%s/%s: stopped after max_pages=%d pages; the run resumes at the next slot",
                    self.config.partner_id if self.config else "?", path.name, path.max_pages)
        return False

    async def _fetch(self, path: PathConfig, window: Window, state: PageState,
                     budget: RateBudget | None) -> PageOutcome:
        """One page, parsed and mapped (not yet published). An unreadable answer is dead-lettered whole."""
        assert self.config is not None and self._client is not None and budget is not None
        req = build_request(self.config.base_url, path, window, state)
        resp = await self._client.fetch(req, budget)
        try:
            doc, records = parse(resp.body, path.format, path.records)
        except DocumentError as err:
            await self._deliver([self._dead(None, resp.body[:MAX_DLQ_BODY], f"{path.name}: {err}", path)])
            raise
        source = f"partner://{self.config.partner_id}/{path.name}"
        mapped = map_records(records, path.readings, path.status, self.config.device_map(), source)
        return PageOutcome(next_state(path, state, doc, resp.headers, len(records), resp.url), len(records), mapped)

    @staticmethod
    def _count(page: PageOutcome, path: PathConfig, st: PathStats) -> None:
        mapped = page.mapped
        st.pages += 1
        st.records += page.records
        st.readings += mapped.readings
        st.status_records += len(mapped.failures) + (len(mapped.batches) if path.status else 0)
        st.refused += len(mapped.refused)
        metrics.count(metrics.polls(), 1, protocol="partner", outcome="ok")
        metrics.count(metrics.readings(), mapped.readings, stage="partner")
        metrics.count(metrics.ingested_readings(), mapped.readings, protocol="partner")

    async def _publish(self, mapped: Mapped, path: PathConfig) -> None:
        parts = self._settings.kafka_partitions
        out: list[OutMessage] = [(self._raw, topics.partition_for(b.device_id, parts), b.device_id.encode(),
                                  codec.encode(b)) for b in mapped.batches]
        out += [(self._raw, topics.partition_for(f.device_id, parts), f.device_id.encode(), codec.encode(f))
                for f in mapped.failures]
        out += [self._dead(d, raw, reason, path) for d, raw, reason in mapped.refused]
        metrics.count(metrics.dead_letters(), len(mapped.refused), stage="partner")
        await self._deliver(out)

    def _dead(self, device_id: str | None, raw: bytes, reason: str, path: PathConfig) -> OutMessage:
        assert self.config is not None
        key = device_id or self.config.partner_id
        return (self._dlq, topics.partition_for(key, self._settings.kafka_partitions), key.encode(),
                codec.encode_dead_letter(reason, raw, stage="partner", partner=self.config.partner_id,
                                         path=path.name, **({"device_id": device_id} if device_id else {})))

    async def _deliver(self, out: list[OutMessage]) -> None:
        """Until Kafka took every record (a broker away holds the page here, and its cursor with it)."""
        backoff = Backoff(base_s=0.2, cap_s=5.0)
        while out:
            errors = await self._producer.deliver(out)
            refused = [m for m, e in zip(out, errors, strict=True) if e is not None and is_permanent(e)]
            if refused:
                self.undelivered += len(refused)
                log.error("Kafka refused %d partner records for good (%s)", len(refused),
                          next(e for e in errors if e is not None and is_permanent(e)))
            out = [m for m, e in zip(out, errors, strict=True) if e is not None and not is_permanent(e)]
            if out:
                log.warning("Kafka did not take %d partner records; retrying", len(out))
                await asyncio.sleep(backoff.next_delay())

    async def _path_failed(self, path: PathConfig, err: HttpFailure | DocumentError, st: PathStats) -> None:
        assert self.config is not None
        kind = err.kind if isinstance(err, HttpFailure) else FailureKind.BAD_RESPONSE
        detail = f"partner {self.config.partner_id}, path {path.name}: {err}"
        if st.last_failure != detail:
            log.warning("%s", detail)  # once per change, not on every failed slot
        st.failed_pages += 1
        st.last_failure = detail
        metrics.count(metrics.polls(), 1, protocol="partner", outcome="failed")
        now_ms, source = int(time.time() * 1000), f"partner://{self.config.partner_id}/{path.name}"
        await self._publish(Mapped(failures=[PollFailure(d.device_id, now_ms, source, kind, detail)
                                             for d in self.config.devices]), path)

    # Backfills ----------------------------------------------------------------------------------

    async def _run_backfills(self) -> None:
        assert self.config is not None
        pid = self.config.partner_id
        while True:
            try:
                for row in await repo.open_backfills(self._pool, pid):
                    await self._backfill_one(row)
            except (OSError, asyncpg.PostgresError) as err:
                log.warning("%s: backfills not read (%s); trying again", pid, err)
            await asyncio.sleep(BACKFILL_CHECK_S)

    async def _backfill_one(self, row: asyncpg.Record) -> None:
        import orjson

        assert self.config is not None
        try:
            path = self.config.path(row["path"])
        except KeyError as err:
            await repo.save_backfill(self._pool, row["id"], "failed", None, row["pages"], row["records"], str(err))
            return
        window = Window(int(row["since"].timestamp() * 1000), int(row["until"].timestamp() * 1000))
        state: PageState = orjson.loads(row["state"]) if row["state"] else {}
        pages, records = row["pages"], row["records"]
        st = PathStats()
        for _ in range(path.max_pages):
            try:
                page = await self._fetch(path, window, state, self._backfill_budget)
                await self._publish(page.mapped, path)
                self._count(page, path, st)
            except (HttpFailure, DocumentError) as err:
                retriable = isinstance(err, HttpFailure) and err.retriable
                await repo.save_backfill(self._pool, row["id"], "running" if retriable else "failed", state, pages,
                                         records, str(err))
                return
            pages, records = pages + 1, records + page.records
            self.backfill_pages += 1
            if page.next is None:
                await repo.save_backfill(self._pool, row["id"], "done", None, pages, records)
                return
            state = page.next
            await repo.save_backfill(self._pool, row["id"], "running", state, pages, records)

    def summary(self) -> dict[str, Any]:
        return {"partner": self.config.partner_id if self.config else None,
                "paths": {n: s.summary() for n, s in self.stats.items()},
                "client": dict(self._client.stats) if self._client else {},
                "backfill_pages": self.backfill_pages, "reconfigured": self.reconfigured,
                "undelivered": self.undelivered}


@ray.remote(num_cpus=0, max_restarts=0)
class PartnerActor:
    """Ray actor around PartnerCore; the supervisor recreates it (same configuration) when it dies."""

    def __init__(self, settings: Settings, name: str) -> None:
        setup_logging(settings.log_level, name)
        self._settings, self._name = settings, name
        self._producer = AsyncProducer(settings.kafka_bootstrap, **{"message.timeout.ms": 30_000})
        self._core: PartnerCore | None = None

    async def configure(self, config: PartnerConfig) -> dict[str, int]:
        if self._core is None:
            pool = await asyncpg.create_pool(self._settings.pg_dsn, min_size=1, max_size=2, command_timeout=30)
            await self._producer.start()
            self._core = PartnerCore(self._settings, pool, self._producer)
        return await self._core.configure(config)

    async def ping(self) -> dict[str, Any]:
        if self._core is not None:
            self._core.check()
        return {"role": "partner", "name": self._name, "pid": os.getpid(),
                **(self._core.summary() if self._core else {})}

    async def stop(self) -> None:
        if self._core is not None:
            await self._core.stop()
        await self._producer.close()
