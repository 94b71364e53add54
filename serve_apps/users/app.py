"""The users Serve applications: `users` (/api/v1/auth: register, token, refresh, logout), `users-me`
(/api/v1/me) and `users-admin` (/api/v1/users: user management). Three applications because Serve routes
one prefix per application (longest prefix wins) and the monitoring application owns `/`; each is one of
this module's FastAPI apps on its own replicas.

Start-up reports every fallback (meterray.auth_backends) and refuses them in production.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from meterray.auth_backends import AuthBackends, auth_backends
from meterray.settings import Settings
from serve_apps.auth import configure_auth
from serve_apps.deps import Db, configure_db
from serve_apps.docs import offline_docs
from serve_apps.prefix import PrefixIsRoot
from serve_apps.users import manage, me, register, sessions
from serve_apps.users.state import configure_users

log = logging.getLogger("meterray.users")

AUTH_PREFIX = "/api/v1/auth"
ME_PREFIX = "/api/v1/me"
USERS_PREFIX = "/api/v1/users"
MAX_BODY_BYTES = 16 * 1024  # a registration or login is a few hundred bytes


async def _limit_body(request: Request, call_next: RequestResponseEndpoint) -> Response:
    """413 before reading a body larger than any request of this API (or one of unknown length)."""
    if request.method in ("POST", "PUT", "PATCH"):
        length = request.headers.get("content-length")
        if length is None or not length.isdigit() or int(length) > MAX_BODY_BYTES:
            return JSONResponse({"detail": f"the request body must state its length and be at most {MAX_BODY_BYTES}"
                                           " bytes"}, status_code=413)
    return await call_next(request)


def _api(title: str, description: str) -> FastAPI:
    api = FastAPI(title=title, version="0.1.0", description=description, docs_url=None, redoc_url=None)
    offline_docs(api)  # /docs and /redoc without a CDN
    api.add_middleware(BaseHTTPMiddleware, dispatch=_limit_body)

    @api.get("/healthz", tags=["health"])
    async def healthz(db: Db) -> dict[str, str]:
        await db.fetchval("SELECT 1")
        return {"status": "ok"}

    return api


auth_api = _api("meterray users", "Registration, login (OAuth2 password flow), token refresh and logout.")
auth_api.include_router(register.router)
auth_api.include_router(sessions.router)
me_api = _api("meterray users: me", "The caller's own user and organisation.")
me_api.add_middleware(PrefixIsRoot)
me_api.include_router(me.router)
users_api = _api("meterray users: management", "Users of the caller's organisation (all of them for platform "
                 "staff): list, create with a role, change the role, disable. Admins only.")
users_api.add_middleware(PrefixIsRoot)
users_api.include_router(manage.router)


def report(backends: AuthBackends) -> None:
    for warning in backends.warnings():
        log.warning("DEVELOPMENT FALLBACK: %s", warning)


class _Replica:
    def __init__(self, settings: Settings) -> None:
        backends = auth_backends(settings)  # raises in production when a check would fall back
        report(backends)
        self._db = configure_db(settings.pg_dsn)
        configure_auth(settings)
        self._state = configure_users(settings, backends)

    async def check_health(self) -> None:
        pool = await self._db.get()
        await pool.fetchval("SELECT 1")

    async def __del__(self) -> None:  # Serve awaits an async __del__ when it stops a replica
        await self._state.checks.close()


@serve.deployment(name="users", num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress(auth_api)
class UsersApi(_Replica):
    pass


@serve.deployment(name="users-me", num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress(me_api)
class MeApi(_Replica):
    pass


@serve.deployment(name="users-admin", num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress(users_api)
class UsersAdminApi(_Replica):
    pass


def build_users_app(settings: Settings) -> Application:
    report(auth_backends(settings))  # where the operator deploys, too (a refusal stops the deploy here)
    return UsersApi.bind(settings)  # type: ignore[attr-defined]  # added by @serve.deployment


def build_me_app(settings: Settings) -> Application:
    auth_backends(settings)
    return MeApi.bind(settings)  # type: ignore[attr-defined]


def build_users_admin_app(settings: Settings) -> Application:
    auth_backends(settings)
    return UsersAdminApi.bind(settings)  # type: ignore[attr-defined]
