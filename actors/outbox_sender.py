"""Delivers the e-mail outbox (notify.email_outbox) beside the notifier, in the same process.

Each due e-mail is leased (attempts counted), sent with its idempotence key, then settled: `sent` with
Unisender's job id, `rejected` when Unisender refuses the address, `failed` when the request itself is
refused or the attempts are spent. Outages, 429 and 5xx (and a refused key or a spent quota, which an
operator can fix) are retried with jittered exponential backoff (Retry-After honoured); a retry carries
the same key, so an e-mail whose answer was lost is not sent twice (external_apis.md §3.2, §3.4).
Without an API key (development) the sender only logs each e-mail and marks it `logged`.
"""
from __future__ import annotations

import asyncio
import logging

import asyncpg

from actors import metrics
from meterray.backoff import Backoff
from meterray.notify import EmailBackend
from meterray.settings import Settings
from protocols.unisender.client import UnisenderClient
from protocols.unisender.wire import Email
from protocols.upstream import InvalidRequest, UpstreamError
from storage.postgres import notify as repo

log = logging.getLogger(__name__)

CLAIM_BATCH = 20
IDLE_WAIT_S = 5.0  # besides the wake-up after every batch of new e-mails


class OutboxSender:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, backend: EmailBackend) -> None:
        self._settings, self._pool, self._backend = settings, pool, backend
        self._client = (UnisenderClient(settings.unisender_url, settings.unisender_api_key.get_secret_value(),
                                        timeout_s=settings.external_timeout_s)
                        if backend is EmailBackend.UNISENDER else None)
        # Longer than any send can take: a lease that ends means the sender died mid-send.
        self._lease_s = 3 * settings.external_timeout_s + 30
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.sent = self.logged = self.rejected = self.failed = self.retries = 0
        self.last_error: str | None = None

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="outbox-sender")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=self._settings.external_timeout_s + 5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        if self._client is not None:
            await self._client.close()

    def check(self) -> None:
        """Raises when the loop died (the notifier's ping then fails and the supervisor replaces it)."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            err = self._task.exception()
            if err is not None:
                raise RuntimeError(f"outbox sender died: {err!r}")

    def stats(self) -> dict[str, object]:
        return {"email_sender": self._backend.value, "emails_sent": self.sent, "emails_logged": self.logged,
                "emails_rejected": self.rejected, "emails_failed": self.failed, "email_retries": self.retries,
                "email_last_error": self.last_error}

    async def _run(self) -> None:
        while not self._stopping:
            wait_s = IDLE_WAIT_S
            try:
                due = await repo.claim_due(self._pool, CLAIM_BATCH, self._lease_s)
                for item in due:
                    await self._deliver(item)
                if due:
                    continue
                next_in = await repo.next_due_in_s(self._pool)
                wait_s = IDLE_WAIT_S if next_in is None else min(IDLE_WAIT_S, max(next_in, 0.05))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:  # PostgreSQL away: wait
                self.last_error = f"outbox: {type(err).__name__}: {err}"
                log.warning("outbox sender: %s", self.last_error)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait_s)
            except asyncio.TimeoutError:
                pass

    async def _deliver(self, item: repo.Outgoing) -> None:
        if self._client is None:
            # Development's log-only sender (meterray.notify.EmailBackend.LOG_ONLY): the text is in the outbox.
            log.warning("e-mail NOT sent (no METERRAY_UNISENDER_API_KEY): outbox %d to %s: %s", item.id, item.email,
                        item.subject)
            await repo.settle(self._pool, item.id, "logged")
            self.logged += 1
            metrics.count(metrics.emails(), 1, outcome="logged")
            return
        s = self._settings
        email = Email(item.email, item.subject, item.body_plain, item.body_html, s.notify_from_email,
                      s.notify_from_name, str(item.idempotence_key), {"outbox_id": str(item.id)})
        try:
            sent = await self._client.send(email)
        except UpstreamError as err:
            self.last_error = str(err)
            if isinstance(err, InvalidRequest) or item.attempts >= s.notify_email_max_attempts:
                log.error("e-mail %d given up after %d attempt(s): %s", item.id, item.attempts, err)
                await repo.settle(self._pool, item.id, "failed", error=str(err))
                self.failed += 1
                metrics.count(metrics.emails(), 1, outcome="failed")
                return
            delay = Backoff(s.notify_email_retry_base_s, s.notify_email_retry_cap_s, item.attempts - 1).next_delay()
            delay = max(delay, min(err.retry_after_s or 0.0, s.notify_email_retry_cap_s))
            log.warning("e-mail %d not sent (attempt %d): %s; next try in %.1fs", item.id, item.attempts, err, delay)
            await repo.retry_later(self._pool, item.id, delay, str(err))
            self.retries += 1
            metrics.count(metrics.emails(), 1, outcome="retry")
            return
        refusal = {a.lower(): c for a, c in sent.failed.items()}.get(item.email.lower())
        if refusal is not None:
            log.warning("e-mail %d refused by Unisender for its address: %s", item.id, refusal)
            await repo.settle(self._pool, item.id, "rejected", job_id=sent.job_id, error=refusal)
            self.rejected += 1
            metrics.count(metrics.emails(), 1, outcome="rejected")
        else:
            await repo.settle(self._pool, item.id, "sent", job_id=sent.job_id)
            self.sent += 1
            metrics.count(metrics.emails(), 1, outcome="sent")
