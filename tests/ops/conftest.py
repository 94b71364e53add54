"""A pipeline of this package's own on the shared test cluster: its own database, topics, Ray namespace
and simulator (3 meters), so the poison records, killed actors and reconfigurations these tests need to
see every metric and audit event never reach the session's runtime (whose tests count dead letters,
restarts and devices)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from meterray.settings import Settings
from tests.conftest import own_clickhouse
from tests.ports import port

OPS_SIM_PORT = port("ops-sim")  # its control port one below


@pytest.fixture(scope="package")
def ops_runtime(stores: Settings, ray_cluster: None,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from meterray.app.demo import _register, manifest_connections, start_simulator
    from meterray.app.runtime import migrate_database, start_ingestion, stop_ingestion
    from storage.kafka.topics import ensure_topics
    from storage.postgres.databases import drop_database, recreate_database

    name = f"{urlsplit(stores.pg_dsn).path.lstrip('/')}_ops"
    dsn = asyncio.run(recreate_database(stores.pg_dsn, name))
    migrate_database(dsn)
    settings = stores.model_copy(update={"pg_dsn": dsn, "kafka_topic_prefix": f"{stores.kafka_topic_prefix}ops.",
                                         "ray_namespace": f"{stores.ray_namespace}-ops",
                                         "clickhouse_url": own_clickhouse(stores, "clickhouse-ops")})
    ensure_topics(settings)
    manifest_path = tmp_path_factory.mktemp("ops-sim") / "manifest.json"
    proc = start_simulator(settings, 3, 3, OPS_SIM_PORT, manifest_path)
    supervisor = None
    try:
        manifest = json.loads(Path(manifest_path).read_text())
        asyncio.run(_register(settings, manifest_connections(manifest, 1.0, 0.5)))
        supervisor = start_ingestion(settings)
        yield {"supervisor": supervisor, "settings": settings, "manifest": manifest}
    finally:
        if supervisor is not None:
            stop_ingestion(supervisor)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
        asyncio.run(drop_database(stores.pg_dsn, name))
