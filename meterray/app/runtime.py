"""Starting and stopping meterray on Ray: the supervisor (which owns every ingestion actor) and the API."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import urllib.request
from typing import Any

import ray
from ray import serve

from meterray.placement import local_node_resources
from meterray.settings import Settings
from serve_apps.capacity import haproxy_dir, serve_env
from serve_apps.monitoring.runtime import ConsumerGroup, RuntimeSources

log = logging.getLogger(__name__)

HEAD_RESOURCE = "node:__internal_head__"  # Ray gives the head node this resource (ray._common.constants)


def init_ray(settings: Settings, *, dashboard: bool = True) -> None:
    """Join the cluster at METERRAY_RAY_ADDRESS, or start a local one sized for this machine."""
    # Local runs bind every port to 127.0.0.1; Ray's token auth would only lock the dashboard.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    if settings.ray_address:  # a cluster's Serve switches are its pods' environment (k8s/base/rayservice.yaml)
        ray.init(address=settings.ray_address, namespace=settings.ray_namespace, log_to_driver=False)
        return
    # Serve's proxy and replicas inherit these (serve_apps.capacity); this runtime's own, even where the
    # environment holds another's (the demo started from a test).
    os.environ.update(serve_env(settings))
    if settings.api_ingress == "haproxy":
        stop_orphaned_haproxy(settings)
    ray.init(
        num_cpus=settings.ray_num_cpus,
        resources=local_node_resources(settings),  # one node runs every actor (meterray.placement)
        namespace=settings.ray_namespace,
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        dashboard_port=settings.dashboard_port,
        _metrics_export_port=settings.metrics_port,
        object_store_memory=300 * 2**20,
        log_to_driver=False,
        # Ray starts workers at nice 15 (meant for batch jobs). Ingestion actors are latency-bound:
        # at nice 15 a shard waits for the CPU at each of a poll cycle's ~30 wake-ups whenever the
        # meters, Kafka or PostgreSQL are busy (bench findings: 1,000 polls/s at nice 0, 700 at 15).
        _system_config={"worker_niceness": 0},
    )


def stop_orphaned_haproxy(settings: Settings, timeout_s: float = 5.0) -> list[int]:
    """Stop the HAProxy a local runtime on the same API port left running when it died without stopping.

    Serve starts HAProxy as a child of its HAProxy manager actor; when Ray is killed outright, HAProxy
    lives on, holding the API port, and the next runtime's HAProxy cannot bind it (the API never
    answers). Only processes reading this port's configuration (serve_apps.capacity.haproxy_dir) whose
    parent is no Ray worker are stopped: a running runtime's HAProxy is left alone. Returns their pids."""
    import psutil

    config = str(haproxy_dir(settings) / "haproxy.cfg")
    orphans: list[psutil.Process] = []
    for proc in psutil.process_iter(["cmdline", "ppid"]):
        if config not in (proc.info["cmdline"] or []):
            continue
        try:
            parent = psutil.Process(proc.info["ppid"]).cmdline()
        except psutil.Error:
            parent = []
        if parent and parent[0].startswith("ray::"):
            continue
        orphans.append(proc)
    if not orphans:
        return []
    log.warning("stopping HAProxy left behind by a runtime that did not stop (pids %s, %s)",
                [p.pid for p in orphans], config)
    for proc in orphans:
        proc.terminate()
    _, alive = psutil.wait_procs(orphans, timeout=timeout_s)
    for proc in alive:
        proc.kill()
    psutil.wait_procs(alive, timeout=timeout_s)
    return [p.pid for p in orphans]


def prepare_stores(settings: Settings) -> dict[str, list[str]]:
    """Apply PostgreSQL migrations and create the Kafka topics (both idempotent)."""
    from storage.kafka.topics import ensure_topics

    return {"migrations": migrate_database(settings.pg_dsn), "topics": ensure_topics(settings)}


def migrate_database(dsn: str) -> list[str]:
    """Apply PostgreSQL migrations and record which meter profiles this code knows (devices.profiles)."""
    from protocols.modbus.profiles import PROFILES
    from storage.postgres.migrate import migrate

    return asyncio.run(migrate(dsn, profiles=PROFILES.keys()))


def start_ingestion(settings: Settings) -> Any:
    """Start (or find) the detached supervisor and let it build every ingestion actor."""
    from actors.supervisor import SUPERVISOR_NAME, Supervisor

    # The namespace explicitly: a Serve replica (serve_entry.ingestion) runs in Serve's own namespace.
    options = {"name": SUPERVISOR_NAME, "namespace": settings.ray_namespace, "lifetime": "detached",
               "get_if_exists": True, "resources": on_the_head()}
    supervisor = Supervisor.options(**options).remote(settings)  # type: ignore[attr-defined]
    ray.get(supervisor.start.remote())
    return supervisor


def on_the_head() -> dict[str, float]:
    """The supervisor runs on the head, next to GCS and Serve's controller: it is control only (a ping a
    second per child, one LISTEN connection), and a worker node that dies then takes only its own
    actors with it, which the supervisor replaces. Asked for as a sliver of the resource Ray gives every
    head (as Ray Train places its state actor): a restarted head (Kubernetes, GCS fault tolerance) has it
    again, where an affinity to the old head's node id would place the supervisor nowhere or anywhere."""
    return {HEAD_RESOURCE: 0.001}


def runtime_sources(settings: Settings) -> RuntimeSources:
    """Where `GET /api/v1/runtime` and `meterray status` find the runtime: the supervisor and the consumer groups."""
    from actors import backfill, ch_writer, device_processor, notifier, pg_writer
    from actors.supervisor import SUPERVISOR_NAME
    from storage.kafka import topics

    groups: tuple[ConsumerGroup, ...] = (ConsumerGroup("device-processor", settings.topic(device_processor.GROUP_ID),
                            settings.topic(topics.READINGS_RAW)),
              ConsumerGroup("pg-writer", settings.topic(pg_writer.GROUP_ID), settings.topic(topics.READINGS)),
              ConsumerGroup("backfill", settings.topic(backfill.GROUP_ID), settings.topic(topics.BACKFILL_REQUESTS)),
              ConsumerGroup("notifier", settings.topic(notifier.GROUP_ID), settings.topic(topics.DEVICE_EVENTS)))
    if settings.ch_writers:
        groups += (ConsumerGroup("ch-writer", settings.topic(ch_writer.GROUP_ID), settings.topic(topics.READINGS)),)
    return RuntimeSources(SUPERVISOR_NAME, settings.ray_namespace, settings.kafka_bootstrap, groups)


def start_api(settings: Settings) -> str:
    from serve_apps.capacity import http_options
    from serve_apps.monitoring.app import build_app

    serve.start(http_options=http_options(settings))
    serve.run(build_app(settings, runtime_sources(settings)), name="monitoring", route_prefix="/", blocking=False)
    start_users_api(settings)
    start_notifications_api(settings)
    url = f"http://{settings.api_host}:{settings.api_port}"
    wait_routed(url, {"monitoring", "users", "users-me", "users-admin", "notifications"})
    return url


def wait_routed(url: str, apps: set[str], timeout_s: float = 180.0) -> None:
    """Until the ingress routes every application: Serve deploys an application before its proxy (or
    HAProxy, which learns the table later still) sends it requests, and until then its prefix answers 404
    or goes to the application at `/`."""
    deadline = time.monotonic() + timeout_s
    routed: set[str] = set()
    while True:
        try:
            with urllib.request.urlopen(f"{url}/-/routes", timeout=5) as resp:
                routed = set(json.loads(resp.read()).values())
        except (OSError, ValueError):
            routed = set()
        if apps <= routed:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the HTTP ingress at {url} did not route {sorted(apps - routed)} within "
                               f"{timeout_s:.0f} s: see Serve's logs under the Ray session directory")
        time.sleep(0.5)


def start_notifications_api(settings: Settings) -> str:
    """/api/v1/notifications (serve_apps.notifications). Reports the log-only e-mail fallback; refuses it
    with METERRAY_ENV=production."""
    from serve_apps.capacity import http_options
    from serve_apps.notifications.app import PREFIX, build_notifications_app

    serve.start(http_options=http_options(settings))
    serve.run(build_notifications_app(settings), name="notifications", route_prefix=PREFIX, blocking=False)
    return f"http://{settings.api_host}:{settings.api_port}"


def start_users_api(settings: Settings) -> str:
    """The users service: /api/v1/auth/*, /api/v1/me and /api/v1/users (three Serve applications: one route
    prefix each). Reports every development fallback; refuses them with METERRAY_ENV=production."""
    from serve_apps.capacity import http_options
    from serve_apps.users.app import (
        AUTH_PREFIX,
        ME_PREFIX,
        USERS_PREFIX,
        build_me_app,
        build_users_admin_app,
        build_users_app,
    )

    serve.start(http_options=http_options(settings))
    serve.run(build_users_app(settings), name="users", route_prefix=AUTH_PREFIX, blocking=False)
    serve.run(build_me_app(settings), name="users-me", route_prefix=ME_PREFIX, blocking=False)
    serve.run(build_users_admin_app(settings), name="users-admin", route_prefix=USERS_PREFIX, blocking=False)
    return f"http://{settings.api_host}:{settings.api_port}"


def stop_ingestion(supervisor: Any, timeout_s: float = 60.0) -> None:
    """Stop every ingestion actor (they flush their producers), then the supervisor itself."""
    ray.get(supervisor.shutdown.remote(), timeout=timeout_s)
    ray.kill(supervisor, no_restart=True)


def stop_all(settings: Settings) -> None:
    """Stop the API and the ingestion actors (flushing their producers), then Ray itself."""
    from actors.supervisor import SUPERVISOR_NAME

    if not ray.is_initialized():
        return
    try:
        stop_ingestion(ray.get_actor(SUPERVISOR_NAME, namespace=settings.ray_namespace))
    except (ValueError, ray.exceptions.RayError) as err:
        log.warning("supervisor did not stop cleanly: %s", err)
    try:
        serve.shutdown()
    except Exception as err:  # Serve may not have been started
        log.debug("serve shutdown: %s", err)
    ray.shutdown()
