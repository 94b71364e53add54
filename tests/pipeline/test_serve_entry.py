"""The Serve entry points of k8s/base/serve_config.yaml: deploying the `ingestion` application starts the
ingestion runtime (the supervisor and its named actors) in the configured namespace."""
from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import ray
from ray import serve
from ray.util.state import list_actors

from meterray.app.runtime import migrate_database, stop_ingestion
from meterray.app.serve_entry import ingestion
from storage.kafka.topics import ensure_topics
from storage.postgres.databases import drop_database, recreate_database
from tests.conftest import own_clickhouse, wait_for

APP = "ingestion-entry-test"


def test_deploying_the_ingestion_application_starts_the_supervisor_and_its_actors(runtime: dict) -> None:
    base = runtime["settings"]
    name = f"{urlsplit(base.pg_dsn).path.lstrip('/')}_serve"
    dsn = asyncio.run(recreate_database(base.pg_dsn, name))
    # A runtime of its own: its own database (no connections: nothing polls the simulator twice),
    # namespace and topics.
    args = {"pg_dsn": dsn, "ray_namespace": f"{base.ray_namespace}-serve",
            "kafka_topic_prefix": f"{base.kafka_topic_prefix}serve.", "kafka_bootstrap": base.kafka_bootstrap,
            "clickhouse_url": own_clickhouse(base, "clickhouse-serve")}
    settings = base.model_copy(update=args)
    supervisor = None
    try:
        migrate_database(dsn)
        ensure_topics(settings)
        serve.run(ingestion(args), name=APP, route_prefix=None)
        supervisor = ray.get_actor("supervisor", namespace=settings.ray_namespace)

        def ready() -> dict | None:
            children = ray.get(supervisor.status.remote())["children"]
            return children if children and all(c["last_ping"] for c in children.values()) else None

        children = wait_for(ready, 60, "the supervisor's children to answer")
        # and no shard: no connections
        assert set(children) == {"device-processor-0", "pg-writer-0", "backfill-0", "notifier-0",
                                 "device-catalog-0", "ch-writer-0"}
        named = {a.name: a.class_name
                 for a in list_actors(address=ray.get_runtime_context().gcs_address,
                                      filters=[("state", "=", "ALIVE")], limit=1000)
                 if a.ray_namespace == settings.ray_namespace}
        assert named == {"supervisor": "Supervisor", "device-processor-0": "DeviceProcessor", "pg-writer-0": "PgWriter",
                         "backfill-0": "BackfillActor",
                         "notifier-0": "Notifier",
                         "device-catalog-0": "DeviceCatalog", "ch-writer-0": "ChWriter"}
        assert serve.status().applications[APP].status == "RUNNING"
        # The runtime of the session's own namespace is another supervisor, untouched.
        assert ray.get(runtime["supervisor"].status.remote())["pid"] != ray.get(supervisor.status.remote())["pid"]
    finally:
        serve.delete(APP)
        if supervisor is not None:
            stop_ingestion(supervisor)
        asyncio.run(drop_database(base.pg_dsn, name))
