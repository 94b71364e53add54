"""The e-mail outbox without a Unisender key (development): each e-mail is written to the log and marked
`logged`, never sent, and the sender says what it is; in production the notifier and the notifications
API refuse to start without the key instead of falling back silently."""
from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg
import pytest
from pydantic import SecretStr

from actors.outbox_sender import OutboxSender
from meterray.auth_backends import BackendConfigError
from meterray.notify import EmailBackend, email_backend, email_warnings
from meterray.settings import Settings


def test_without_a_key_emails_are_logged_and_marked_logged_never_sent(actors_db: Settings,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    settings = actors_db.model_copy(update={"unisender_api_key": SecretStr("")})
    assert email_backend(settings) is EmailBackend.LOG_ONLY
    # What the notifier reports at start-up and among its counters in GET /api/v1/runtime (`fallbacks`).
    assert any("METERRAY_UNISENDER_API_KEY is not set" in w for w in email_warnings(EmailBackend.LOG_ONLY))
    assert email_warnings(EmailBackend.UNISENDER) == []

    async def run() -> tuple[list[asyncpg.Record], dict[str, object]]:
        pool = await asyncpg.create_pool(settings.pg_dsn, min_size=1, max_size=2)
        try:
            keys = [uuid.uuid4(), uuid.uuid4()]
            await pool.executemany(
                "INSERT INTO notify.email_outbox (idempotence_key, event_key, user_id, email, subject, body_plain,"
                " body_html) VALUES ($1, $2, $3, 'anna@example.com', 'meterray: m-1 is offline', 'text', '<p>t</p>')",
                [(k, "0" * 32, uuid.uuid4()) for k in keys])
            sender = OutboxSender(settings, pool, EmailBackend.LOG_ONLY)
            await sender.start()
            deadline = asyncio.get_running_loop().time() + 30
            rows: list[asyncpg.Record] = []
            while asyncio.get_running_loop().time() < deadline:
                rows = await pool.fetch("SELECT status, attempts, sent_at, job_id FROM notify.email_outbox"
                                        " WHERE idempotence_key = ANY($1::uuid[])", keys)
                if all(r["status"] == "logged" for r in rows):
                    break
                await asyncio.sleep(0.2)
            stats = sender.stats()
            await sender.stop()
            return rows, stats
        finally:
            await pool.close()

    with caplog.at_level(logging.WARNING, logger="actors.outbox_sender"):
        rows, stats = asyncio.run(run())
    assert [r["status"] for r in rows] == ["logged", "logged"]
    assert all(r["attempts"] == 1 and r["sent_at"] is not None and r["job_id"] is None for r in rows)
    assert stats["email_sender"] == "log-only" and stats["emails_logged"] == 2 and stats["emails_sent"] == 0
    assert sum("NOT sent" in r.getMessage() and "m-1 is offline" in r.getMessage() for r in caplog.records) == 2


def test_production_refuses_to_start_the_notifier_or_the_api_without_a_key() -> None:
    from actors.notifier import NotifierCore
    from serve_apps.notifications.app import build_notifications_app

    production = Settings(env="production", token_signing_key="p" * 40)
    with pytest.raises(BackendConfigError, match="METERRAY_UNISENDER_API_KEY"):
        NotifierCore(production, None, None, "notifier-0")  # type: ignore[arg-type]  # refused before any I/O
    with pytest.raises(BackendConfigError, match="METERRAY_UNISENDER_API_KEY"):
        build_notifications_app(production)
