"""What each actor of a running pipeline asks Ray for (meterray.placement), as Ray's state API reports it:
the supervisor the head's resource, every ingestion actor `ingestion`, every Serve replica `serve`.
(tests/cluster/test_node_loss.py shows the same rule at work on a cluster of several nodes.)"""
from __future__ import annotations

from typing import Any

import ray
from ray import serve
from ray.util.state import list_actors

from meterray.app.runtime import HEAD_RESOURCE
from meterray.settings import Settings
from serve_apps.monitoring.app import build_app

APP = "ops-placement-test"


def _alive(namespace: str | None = None) -> list[Any]:
    actors = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")],
                         limit=1000, detail=True)
    return [a for a in actors if namespace is None or a.ray_namespace == namespace]


def test_supervisor_on_the_head_ingestion_actors_and_serve_replicas_by_their_resources(
        ops_runtime: dict[str, Any]) -> None:
    settings: Settings = ops_runtime["settings"]
    asks = {a.name: {k: v for k, v in (a.required_resources or {}).items() if k != "CPU" or v}
            for a in _alive(settings.ray_namespace)}
    assert asks.pop("supervisor") == {HEAD_RESOURCE: 0.001}
    assert {n.rsplit("-", 1)[0] for n in asks} == {"modbus-shard", "device-processor", "pg-writer", "backfill",
                                                   "notifier", "device-catalog", "ch-writer"}
    assert asks == dict.fromkeys(asks, {"ingestion": 1.0})

    # The monitoring application's replica (on the session's Serve, or one started on the run's API port).
    serve.start(http_options={"host": settings.api_host, "port": settings.api_port})
    serve.run(build_app(settings), name=APP, route_prefix=f"/{APP}", blocking=False)
    try:
        replicas = [a for a in _alive() if a.class_name == f"ServeReplica:{APP}:monitoring"]
        assert replicas and all((a.required_resources or {}).get("serve") == 1.0 for a in replicas), replicas
    finally:
        serve.delete(APP)
