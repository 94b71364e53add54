"""The notifications Serve application at /api/v1/notifications (one route prefix per application; the
monitoring application owns `/`). Start-up reports the e-mail sender's fallback and refuses it in production.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from meterray.notify import email_backend, email_warnings
from meterray.placement import serve_request
from meterray.settings import Settings
from serve_apps.auth import configure_auth
from serve_apps.deps import Db, configure_db
from serve_apps.docs import offline_docs
from serve_apps.notifications import routes, webhook
from serve_apps.prefix import PrefixIsRoot

log = logging.getLogger("meterray.notifications")

PREFIX = "/api/v1/notifications"

api = FastAPI(title="meterray notifications", version="0.1.0", docs_url=None, redoc_url=None,
              description="The caller's in-app notifications and channel preferences; Unisender Go's webhook.")
offline_docs(api)  # /docs and /redoc without a CDN
api.add_middleware(PrefixIsRoot)  # GET /api/v1/notifications is this application's root
api.include_router(webhook.router)
api.include_router(routes.router)


@api.get("/healthz", tags=["health"])
async def healthz(db: Db) -> dict[str, str]:
    await db.fetchval("SELECT 1")
    return {"status": "ok"}


@serve.deployment(name="notifications", num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class NotificationsApi:
    def __init__(self, settings: Settings) -> None:
        email_backend(settings)  # raises in production without a Unisender key
        self._db = configure_db(settings.pg_dsn)
        configure_auth(settings)
        webhook.configure_webhook(settings.unisender_api_key.get_secret_value())

    async def check_health(self) -> None:
        pool = await self._db.get()
        await pool.fetchval("SELECT 1")


def build_notifications_app(settings: Settings) -> Application:
    for warning in email_warnings(email_backend(settings)):  # a refusal stops the deploy here
        log.warning("DEVELOPMENT FALLBACK: %s", warning)
    options = {"num_cpus": 0, "resources": serve_request(settings)}
    return NotificationsApi.options(ray_actor_options=options).bind(settings)  # type: ignore[attr-defined]
