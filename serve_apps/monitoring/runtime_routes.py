"""`GET /api/v1/runtime`: the ingestion runtime's actors, rates, lag and device states, and the development
fallbacks in force (meterray.auth_backends). Platform staff only (meterray.access: runtime:read)."""
from __future__ import annotations

from typing import Annotated

import ray
from fastapi import APIRouter, HTTPException, Query

from meterray.auth_backends import auth_backends
from meterray.notify import email_backend, email_warnings
from serve_apps.auth import RuntimeScope
from serve_apps.deps import AppSettings, Db
from serve_apps.monitoring.runtime import RuntimeOut, RuntimeSources, runtime_view

MAX_WINDOW_S = 30.0

runtime_router = APIRouter(prefix="/api/v1/runtime", tags=["runtime"])

# Set per replica by the deployment's constructor (the FastAPI app itself is shipped by value).
_sources: RuntimeSources | None = None


def configure_runtime(sources: RuntimeSources | None) -> None:
    global _sources
    _sources = sources


@runtime_router.get("", response_model=RuntimeOut)
async def runtime(
    db: Db,
    _: RuntimeScope,
    settings: AppSettings,
    window_s: Annotated[float, Query(ge=0.5, le=MAX_WINDOW_S, description="seconds between the two samples rates "
                                                                          "are computed from")] = 2.0,
) -> RuntimeOut:
    """Every actor of the runtime with its assignment, counters, rates and restarts; consumer lag;
    devices per status; every development fallback in force (`development_fallbacks`, empty in production)."""
    if _sources is None:
        raise HTTPException(503, "this API was started without the runtime's sources")
    try:
        supervisor = ray.get_actor(_sources.supervisor, namespace=_sources.namespace)
    except ValueError:
        raise HTTPException(503, f"no supervisor {_sources.supervisor!r} in namespace {_sources.namespace!r}: "
                                 "the ingestion runtime is not running") from None
    try:
        view = await runtime_view(supervisor, db, _sources, window_s)
    except (TimeoutError, ray.exceptions.RayError) as err:
        raise HTTPException(503, f"the supervisor did not answer: {type(err).__name__}") from None
    fallbacks = auth_backends(settings).warnings() + email_warnings(email_backend(settings))
    return view.model_copy(update={"development_fallbacks": fallbacks})
