"""Ops through the Ray dashboard and `meterray status`: every actor carries a name that says what it is,
and the runtime's one-screen view (CLI and GET /api/v1/runtime) shows the shards, their assignments,
rates, lag and device states."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest
import ray
from ray.util.state import list_actors

from meterray.app.status import CLEAR
from meterray.auth_backends import auth_backends
from meterray.settings import REPO_ROOT
from tests.conftest import wait_for
from tests.pipeline.helpers import http, platform_admin, sql

CLASS_OF_ROLE = {"modbus-shard": "ModbusShard", "device-processor": "DeviceProcessor", "pg-writer": "PgWriter",
                 "backfill": "BackfillActor",
                 "notifier": "Notifier",
                 "device-catalog": "DeviceCatalog", "ch-writer": "ChWriter"}


def _children(runtime: dict) -> dict[str, dict]:
    return ray.get(runtime["supervisor"].status.remote())["children"]


def _device_states(dsn: str) -> dict[str, int]:
    rows = sql(dsn, "SELECT coalesce(s.status, 'unknown') AS status, count(*) AS n FROM devices.devices d "
                    "LEFT JOIN devices.device_state s ON s.device_id = d.id GROUP BY 1")
    return {r["status"]: r["n"] for r in rows}


def test_every_actor_shows_its_name_in_the_dashboard_actor_list(runtime: dict) -> None:
    settings = runtime["settings"]
    children = _children(runtime)
    assert {c["role"] for c in children.values()} == set(CLASS_OF_ROLE)
    # The address explicitly: other Ray instances may run on this machine.
    alive = [a for a in list_actors(address=ray.get_runtime_context().gcs_address,
                                    filters=[("state", "=", "ALIVE")], limit=1000)
             if a.ray_namespace == settings.ray_namespace]
    by_name = {a.name: a.class_name for a in alive if a.name}
    for name, child in children.items():
        assert by_name.get(name) == CLASS_OF_ROLE[child["role"]], (name, by_name)
    assert by_name.get("supervisor") == "Supervisor"
    shards = sorted(n for n in by_name if n.startswith("modbus-shard-"))
    assert len(shards) >= 2 and shards == sorted(n for n, c in children.items() if c["role"] == "modbus-shard")
    # Every actor of the runtime has a name: none of ours shows up anonymous.
    ours = {"Supervisor", *CLASS_OF_ROLE.values()}
    assert not [a for a in alive if a.class_name in ours and not a.name]


def _assignments(actors: list[dict]) -> dict[str, tuple[str, int, list[str]]]:
    return {a["name"]: (a["role"], a["connections"], sorted(a["connection_ids"])) for a in actors}


def _supervisor_assignments(runtime: dict) -> dict[str, tuple[str, int, list[str]]]:
    return {name: (c["role"], c["connections"], sorted(c["connection_ids"])) for name, c in _children(runtime).items()}


def _settled(runtime: dict, view: Callable[[], dict | None]) -> dict:
    """A view whose assignments are the supervisor's and cover exactly the enabled connections. Earlier
    tests change connections; the supervisor applies a change within a reconcile, so wait for that."""
    enabled_sql = "SELECT id FROM devices.connections WHERE enabled"

    def check() -> dict | None:
        body = view()
        if body is None or _assignments(body["actors"]) != _supervisor_assignments(runtime):
            return None
        enabled = sorted(r["id"] for r in sql(runtime["settings"].pg_dsn, enabled_sql))
        return body if sorted(c for a in body["actors"] for c in a["connection_ids"]) == enabled else None

    return wait_for(check, 90, "the runtime view to show the supervisor's assignment of every enabled connection",
                    every_s=1.0)  # type: ignore[return-value]  # wait_for returns what check returned


def test_runtime_endpoint_shows_actors_assignments_rates_lag_and_device_states(runtime: dict) -> None:
    settings, api = runtime["settings"], runtime["api"]

    def endpoint() -> dict | None:
        status, body = http("GET", f"{api}/api/v1/runtime?window_s=2", headers=platform_admin())
        assert status == 200, body
        return body

    body = _settled(runtime, endpoint)
    assert {a["role"] for a in body["actors"]} == set(CLASS_OF_ROLE)
    assert len([a for a in body["actors"] if a["role"] == "modbus-shard"]) >= 2
    assert body["window_s"] >= 2
    # 12 meters polled every second: the shards together poll about 12 times per second.
    assert body["totals_per_s"]["modbus-shard.polls_ok"] > 3
    assert {(g["role"], g["topic"]) for g in body["lag"]} == {
        ("device-processor", settings.topic("readings.raw")), ("pg-writer", settings.topic("readings")),
        ("backfill", settings.topic("backfill-requests")),
        ("notifier", settings.topic("device-events")),
        ("ch-writer", settings.topic("readings"))}
    assert all(g["lag"] is not None and g["lag"] >= 0 for g in body["lag"]), body["lag"]
    assert sum(body["device_states"].values()) == sum(_device_states(settings.pg_dsn).values())
    assert body["device_states"].get("online", 0) >= 1
    # The run has no API keys nor a signing key: every development fallback is listed, as at start-up.
    assert body["development_fallbacks"] == auth_backends(settings).warnings()
    assert any(w.startswith("METERRAY_FNS_API_KEY is not set") for w in body["development_fallbacks"])

    status, body = http("GET", f"{api}/api/v1/runtime?window_s=0", headers=platform_admin())
    assert status == 422


def _env(runtime: dict) -> dict[str, str]:
    settings = runtime["settings"]
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "METERRAY_RAY_ADDRESS": ray.get_runtime_context().gcs_address,
            "METERRAY_RAY_NAMESPACE": settings.ray_namespace, "METERRAY_PG_DSN": settings.pg_dsn,
            "METERRAY_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "METERRAY_KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix}


def _meterray(runtime: dict, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "meterray.app.cli", *args], env=_env(runtime), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_meterray_status_shows_the_shards_their_counts_and_the_devices(runtime: dict) -> None:
    settings = runtime["settings"]
    wait_for(lambda: _device_states(settings.pg_dsn).get("online"), 60, "some device to be online")
    view = _settled(runtime, lambda: json.loads(_meterray(runtime, "status", "--interval", "1", "--json")))
    assert view["totals_per_s"]["modbus-shard.polls_ok"] > 3
    children = _children(runtime)
    out = _meterray(runtime, "status", "--interval", "1")
    if _supervisor_assignments(runtime) != {n: (c["role"], c["connections"], sorted(c["connection_ids"]))
                                            for n, c in children.items()}:
        pytest.fail("the assignment changed while `meterray status` ran; nothing should change it now")
    for name, child in children.items():
        row = next((line for line in out.splitlines() if line.startswith(name + " ")), None)
        assert row is not None, out
        assert row.split()[3] == str(child["connections"]), row  # the CONNS column
        if child["role"] == "modbus-shard":
            assert f"{name}: {child['connections']} connections" in out
            for cid in child["connection_ids"]:
                assert cid in out
    assert "CONSUMER LAG" in out and settings.topic("readings.raw") in out
    devices = next(line for line in out.splitlines() if line.startswith("DEVICES"))
    assert "online" in devices
    total = next(line for line in out.splitlines() if line.strip().startswith("total"))
    assert int(total.split()[1]) == sum(_device_states(settings.pg_dsn).values())


def test_meterray_status_watch_refreshes_the_screen_until_interrupted(runtime: dict) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "meterray.app.cli", "status", "--watch", "--interval", "1"],
                            env=_env(runtime), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    screens: list[str] = []
    reader = threading.Thread(target=lambda: screens.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: "".join(screens).count(CLEAR) >= 3, 90, "three refreshes of `meterray status --watch`")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    refreshes = "".join(screens).split(CLEAR)[1:]
    assert all("modbus-shard-0" in screen and "CONSUMER LAG" in screen for screen in refreshes[:3])
