"""The monitoring Serve application: a FastAPI ingress over PostgreSQL (and the runtime's own status)."""
from __future__ import annotations

from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from meterray.auth_backends import auth_backends
from meterray.placement import serve_request
from meterray.settings import Settings
from serve_apps.auth import configure_auth
from serve_apps.cabinet.app import configure_cabinet, mount_cabinet
from serve_apps.capacity import db_pool_size, ingress_options
from serve_apps.connections.routes import connections_router
from serve_apps.deps import Db, configure_db, configure_settings
from serve_apps.docs import offline_docs
from serve_apps.forecasting.recommend_routes import recommend_router
from serve_apps.forecasting.routes import forecast_router
from serve_apps.monitoring.aggregates import aggregates_router
from serve_apps.monitoring.consumption import consumption_router
from serve_apps.monitoring.routes import devices_router, health_router
from serve_apps.monitoring.runtime import RuntimeSources
from serve_apps.monitoring.runtime_routes import configure_runtime, runtime_router
from serve_apps.partners.deps import configure_partners
from serve_apps.partners.routes import partners_router

api = FastAPI(title="meterray monitoring", version="0.1.0", docs_url=None, redoc_url=None,  # offline_docs below
              description="Devices, their health, their current values, the readings archive and interval consumption.")
offline_docs(api)
api.include_router(devices_router)
api.include_router(health_router)
api.include_router(runtime_router)
api.include_router(partners_router)  # the partners seed service's routes, served by the same ingress for now
api.include_router(consumption_router)
api.include_router(connections_router)  # Modbus and MQTT connections, authenticated
api.include_router(forecast_router)  # forecasts and recommendations (serve_apps.forecasting)
api.include_router(recommend_router)
api.include_router(aggregates_router)  # long-range history from the ClickHouse copy
mount_cabinet(api)  # the web cabinet's pages at / (same origin as the API; Serve routes / to this app)


@api.get("/healthz", tags=["health"])
async def healthz(db: Db) -> dict[str, str]:
    await db.fetchval("SELECT 1")
    return {"status": "ok"}


@serve.deployment(name="monitoring", num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class MonitoringApi:
    def __init__(self, settings: Settings, sources: RuntimeSources | None = None) -> None:
        auth_backends(settings)  # production refuses to serve with a fallback (the public signing key above all)
        self._db = configure_db(settings.pg_dsn, db_pool_size(settings))
        configure_auth(settings)  # every route but /healthz and partner webhooks needs an access token
        configure_runtime(sources)
        configure_partners(settings)
        configure_settings(settings)
        configure_cabinet(settings)

    async def check_health(self) -> None:
        """Serve marks the replica unhealthy (and replaces it) while PostgreSQL does not answer."""
        pool = await self._db.get()
        await pool.fetchval("SELECT 1")


def build_app(settings: Settings, sources: RuntimeSources | None = None) -> Application:
    """`sources` (where the supervisor and the consumer groups are) enables GET /api/v1/runtime. Raises
    meterray.auth_backends.BackendConfigError with METERRAY_ENV=production and a development fallback."""
    auth_backends(settings)
    # On the serve nodes (meterray.placement): Serve's proxies serve HTTP where the replicas are.
    options = {"num_cpus": 0, "resources": serve_request(settings)}
    return MonitoringApi.options(ray_actor_options=options, **ingress_options(settings)).bind(  # type: ignore[attr-defined]
        settings, sources)
