"""A driver process for the multi-node tests: joins the cluster through `METERRAY_RAY_ADDRESS` (as an
operator's `meterray` does) and prints one JSON document. The test process itself stays out of that
cluster (it is already the driver of the shared test cluster).

    python -m tests.cluster.driver start    # start the supervisor (it builds every actor), print its status
    python -m tests.cluster.driver status   # the supervisor's status and the cluster's nodes
    python -m tests.cluster.driver stop     # stop the runtime
"""
from __future__ import annotations

import json
import sys
from typing import Any

import ray

from actors.supervisor import SUPERVISOR_NAME
from meterray.app.runtime import HEAD_RESOURCE, init_ray, start_ingestion, stop_ingestion
from meterray.settings import Settings


def _nodes() -> list[dict[str, Any]]:
    return [{"node_id": n["NodeID"], "alive": n["Alive"], "head": HEAD_RESOURCE in n.get("Resources", {}),
             "resources": n.get("Resources", {})} for n in ray.nodes()]


def main(command: str) -> dict[str, Any]:
    settings = Settings.from_env()
    init_ray(settings)
    if command == "start":
        supervisor = start_ingestion(settings)
    else:
        supervisor = ray.get_actor(SUPERVISOR_NAME, namespace=settings.ray_namespace)
    if command == "stop":
        stop_ingestion(supervisor)
        return {"stopped": True}
    status = ray.get(supervisor.status.remote(), timeout=30)
    return {"status": status, "nodes": _nodes()}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
