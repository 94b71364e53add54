"""Shared fixtures: real local services, a fresh test database, one Ray cluster for the whole run.

Each run uses its own PostgreSQL database and its own Kafka topic prefix, so runs never see each
other's data. The only things faked anywhere are third-party web services.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from meterray.settings import Settings  # noqa: E402
from tests.ports import BASE as SIM_BASE_PORT  # noqa: E402  (every test port: tests/ports.py)
from tests.ports import port  # noqa: E402

RUN_ID = uuid.uuid4().hex[:8]
SIM_PORTS, SIM_UNITS = 4, 3  # 12 simulated meters behind 4 TCP endpoints
POLL_INTERVAL_S = 1.0
# The fake Unisender Go of the notification tests (simulators/fake_unisender.py): the runtime's notifier
# sends there; nothing listens unless a test started it, and nothing is sent unless a test's devices
# belong to an organisation with users.
UNISENDER_PORT = port("unisender")
UNISENDER_KEY = "unisender-test-key-7e3b91c4d2"


@pytest.fixture(scope="session")
def settings() -> Iterator[Settings]:
    from storage.postgres.databases import drop_database, recreate_database

    base = Settings.from_env()
    clickhouse_dir = Path(tempfile.gettempdir()) / f"meterray-test-{RUN_ID}" / "clickhouse"
    # A database of its own per run, so two runs on one server (two checkouts) never meet.
    test_db = f"{urlsplit(base.pg_dsn).path.lstrip('/') or 'meterray'}_test_{RUN_ID}"
    yield base.model_copy(update={
        "pg_dsn": asyncio.run(recreate_database(base.pg_dsn, test_db)),
        "kafka_topic_prefix": f"test-{RUN_ID}.",
        "ray_namespace": f"meterray-test-{RUN_ID}",
        "api_port": int(os.environ.get("METERRAY_TEST_API_PORT", "18000")),
        "connections_per_shard": 2,
        "backfill_scan_s": 5.0,  # the gap scan runs within the tests' patience (tests/pipeline/test_backfill.py)
        "unisender_url": f"http://127.0.0.1:{UNISENDER_PORT}/ru/transactional/api/v1",
        "unisender_api_key": SecretStr(UNISENDER_KEY),
        # The run's own embedded ClickHouse (chDB: one process per data directory, so never a shared one).
        "clickhouse_url": f"chdb://{clickhouse_dir}",
    })
    asyncio.run(drop_database(base.pg_dsn, test_db))
    shutil.rmtree(clickhouse_dir.parent, ignore_errors=True)


def own_clickhouse(settings: Settings, name: str) -> str:
    """A chdb:// URL of its own beside the run's, for a second runtime (chDB: one process per directory)."""
    return f"chdb://{Path(settings.clickhouse.removeprefix('chdb://')).parent / name}"


@pytest.fixture(scope="session")
def local_clickhouse(settings: Settings) -> str:
    """The embedded ClickHouse of this test process (a chdb:// URL). chDB opens one data directory per process,
    so every in-process ClickHouse test uses this one (each with a database of its own), and it is never the
    runtime's (`settings.clickhouse`), which the ch-writer actor's process owns."""
    return own_clickhouse(settings, "clickhouse-local")


@pytest.fixture(scope="session")
def database(settings: Settings) -> Settings:
    """The run's PostgreSQL database, migrated, with the meter profiles the code knows."""
    from meterray.app.runtime import migrate_database

    migrate_database(settings.pg_dsn)
    return settings


@pytest.fixture(scope="session")
def stores(database: Settings) -> Iterator[Settings]:
    """PostgreSQL migrated and the run's Kafka topics created; every topic of the run is deleted at
    the end (a broker that collects thousands of test partitions restarts slowly)."""
    from confluent_kafka.admin import AdminClient

    from storage.kafka.topics import ensure_topics

    ensure_topics(database)
    yield database
    admin = AdminClient({"bootstrap.servers": database.kafka_bootstrap})
    mine = [t for t in admin.list_topics(timeout=30).topics if t.startswith(database.kafka_topic_prefix)]
    for future in admin.delete_topics(mine, operation_timeout=30).values() if mine else ():
        future.result(timeout=60)


@pytest.fixture(scope="session")
def ray_cluster(settings: Settings) -> Iterator[None]:
    import ray

    # With the dashboard: the actor list operators read (ray.util.state) is served by it. Its port follows
    # the run's API port, so concurrent runs of several checkouts do not meet.
    dashboard_port = int(os.environ.get("METERRAY_TEST_DASHBOARD_PORT", settings.api_port + 1000))
    from meterray.placement import local_node_resources

    # Advertising the ingestion and serve resources as meterray's local Ray does (meterray.placement).
    ray.init(num_cpus=2, resources=local_node_resources(settings), include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=dashboard_port, namespace=settings.ray_namespace, object_store_memory=200 * 2**20,
             log_to_driver=False,
             _system_config={"worker_niceness": 0})  # as meterray's runtime: actors are not batch jobs
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def simulator(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict]]:
    """Simulated Modbus meters in their own process; yields the manifest."""
    import json

    from meterray.app.demo import start_simulator

    (settings.var_dir / "log").mkdir(parents=True, exist_ok=True)
    manifest = tmp_path_factory.mktemp("sim") / "manifest.json"
    proc = start_simulator(settings, SIM_PORTS * SIM_UNITS, SIM_UNITS, SIM_BASE_PORT, manifest)
    yield json.loads(Path(manifest).read_text())
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def sim_control() -> str:
    return f"http://127.0.0.1:{SIM_BASE_PORT - 1}"


@pytest.fixture(scope="session")
def runtime(stores: Settings, ray_cluster: None, simulator: list[dict]) -> Iterator[dict]:
    """The whole pipeline polling the simulator every second, with the monitoring API."""
    from meterray.app.demo import _register, manifest_connections
    from meterray.app.runtime import start_api, start_ingestion, stop_ingestion

    connections = manifest_connections(simulator, POLL_INTERVAL_S, 0.5)
    asyncio.run(_register(stores, connections))
    supervisor = start_ingestion(stores)
    api = start_api(stores)
    yield {"supervisor": supervisor, "api": api, "manifest": simulator, "settings": stores}
    stop_ingestion(supervisor)
    from ray import serve

    serve.shutdown()


def wait_for(check: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.5) -> object:
    """Poll `check` until it returns something truthy; fail with `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


# Partner HTTP API simulators (simulators/partner_api.py), each its own process; one for steady
# streams, one whose faults (slow pages, 429, 500, token expiry, device status) tests switch on.
PARTNER_SIM_PORT = port("partner-sim")
PARTNER_SIM_PORT_2 = port("partner-sim-2")


def _partner_sim(settings: Settings, listen: int, devices: int) -> Iterator[str]:
    from simulators import partner_api

    proc = partner_api.start(listen, devices, 1.0, settings.var_dir / "log" / f"partner-sim-{listen}.log")
    yield f"http://127.0.0.1:{listen}"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def partner_sim(settings: Settings) -> Iterator[str]:
    yield from _partner_sim(settings, PARTNER_SIM_PORT, 40)


@pytest.fixture(scope="session")
def partner_sim_2(settings: Settings) -> Iterator[str]:
    yield from _partner_sim(settings, PARTNER_SIM_PORT_2, 10)
