"""Serve application builders for `serve deploy` and KubeRay's `serveConfigV2` (k8s/base/serve_config.yaml).

Each is an application builder: Serve imports it from the config's `import_path` and calls it with the
application's `args`. Settings are the process's `METERRAY_*` variables (on Kubernetes: the pod's env,
secrets by reference) with `args` on top, so `args: {kafka_partitions: 12}` overrides a setting.

- `ingestion`: one replica that starts (or finds) the detached supervisor when the application deploys,
  so deploying the service starts the ingestion runtime, and checks it with every health check. The
  supervisor is detached: redeploying or deleting the Serve application does not stop ingestion
  (`meterray` stops it through the supervisor's `shutdown`).
- `monitoring`: the HTTP API (serve_apps.monitoring).
- `users`, `users_me`, `users_admin`: the users service (serve_apps.users) at /api/v1/auth, /api/v1/me and
  /api/v1/users.
- `notifications`: in-app notifications, preferences and Unisender's webhook at /api/v1/notifications.
"""
from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from ray.serve import Application

from meterray.app.runtime import runtime_sources, start_ingestion
from meterray.placement import serve_request
from meterray.settings import Settings
from serve_apps.monitoring.app import build_app
from serve_apps.notifications.app import build_notifications_app
from serve_apps.users.app import build_me_app, build_users_admin_app, build_users_app

HEALTH_TIMEOUT_S = 10.0


def settings_from(args: dict[str, Any] | None) -> Settings:
    return Settings.from_env(**(args or {}))


@serve.deployment(name="ingestion-supervisor", num_replicas=1, ray_actor_options={"num_cpus": 0},
                  health_check_period_s=10, health_check_timeout_s=30)
class IngestionRuntime:
    def __init__(self, settings: Settings) -> None:
        self._supervisor = start_ingestion(settings)

    async def check_health(self) -> None:
        """Unhealthy while the supervisor does not answer (Ray restarts it; Serve replaces this replica)."""
        await asyncio.wait_for(self._supervisor.status.remote(), HEALTH_TIMEOUT_S)

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._supervisor.status.remote()
        return result


def ingestion(args: dict[str, Any] | None = None) -> Application:
    settings = settings_from(args)
    # A Serve replica like any other (meterray.placement); the supervisor it starts goes to the head.
    options = {"num_cpus": 0, "resources": serve_request(settings)}
    return IngestionRuntime.options(ray_actor_options=options).bind(settings)  # type: ignore[attr-defined]


def monitoring(args: dict[str, Any] | None = None) -> Application:
    settings = settings_from(args)
    return build_app(settings, runtime_sources(settings))


def users(args: dict[str, Any] | None = None) -> Application:
    return build_users_app(settings_from(args))


def users_me(args: dict[str, Any] | None = None) -> Application:
    return build_me_app(settings_from(args))


def users_admin(args: dict[str, Any] | None = None) -> Application:
    return build_users_admin_app(settings_from(args))


def notifications(args: dict[str, Any] | None = None) -> Application:
    return build_notifications_app(settings_from(args))
