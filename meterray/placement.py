"""Where the runtime's actors run on a Ray cluster: by custom resources, not by luck.

The rule (README "Placement on a Ray cluster"):
- every ingestion actor — Modbus/MQTT shards, partner actors, device processors, PostgreSQL writers —
  asks for `ingestion_resource_per_actor` of the custom resource `ingestion_resource` (default 1 of
  `ingestion`), so it runs only on nodes that advertise it; a node advertising `NODE_UNITS` holds up to
  1000 of them (its CPU, not this count, is the real limit: see connections_per_shard);
- every Serve replica asks for `serve_resource_per_replica` of `serve_resource` (default 1 of `serve`):
  the HTTP replicas run on the serve nodes, where Serve's proxies then serve HTTP;
- the supervisor (control only) runs on the head (meterray.app.runtime.on_the_head);
- a head started with `--num-cpus 0` and neither resource runs no work.
A local Ray (`meterray demo`, the tests) advertises both resources, so one node runs everything.

No Ray here: the core only says what to ask for; meterray.app and actors pass it to Ray.
"""
from __future__ import annotations

from meterray.settings import Settings

NODE_UNITS = 1000.0  # what a node of a role advertises: k8s/ worker groups, ray_cluster.yaml, a local Ray


def ingestion_request(settings: Settings) -> dict[str, float]:
    """The custom resources an ingestion actor asks Ray for (`.options(resources=…)`)."""
    if not settings.ingestion_resource:
        return {}
    return {settings.ingestion_resource: settings.ingestion_resource_per_actor}


def serve_request(settings: Settings) -> dict[str, float]:
    """The custom resources a Serve replica asks for (`ray_actor_options["resources"]`)."""
    if not settings.serve_resource:
        return {}
    return {settings.serve_resource: settings.serve_resource_per_replica}


def local_node_resources(settings: Settings) -> dict[str, float]:
    """What a single local Ray node advertises so that it can run every actor of the runtime."""
    return {name: NODE_UNITS for name in (settings.ingestion_resource, settings.serve_resource) if name}
