"""Faults on the real pipeline: meters answering garbage or exception codes, a replaced meter whose
counter restarts, a killed supervisor. A killed shard is in test_outages.py."""
from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timezone

import ray

from storage.kafka import codec, topics
from tests.conftest import POLL_INTERVAL_S, wait_for
from tests.pipeline.helpers import http, read_topic, sql

ENERGY = "1-0:1.8.0"


def _devices(api: str) -> dict[str, dict]:
    status, body = http("GET", f"{api}/api/v1/devices")
    assert status == 200, body
    return {d["id"]: d for d in body}


def _current_ts(api: str, device_id: str) -> str | None:
    status, body = http("GET", f"{api}/api/v1/devices/{device_id}/readings/current")
    readings = {r["quantity"]: r for r in (body or {}).get("readings", [])}
    return readings.get(ENERGY, {}).get("ts") if status == 200 else None


def _all_reporting(runtime: dict) -> None:
    ids = [m["device_id"] for m in runtime["manifest"]]
    wait_for(lambda: all(_current_ts(runtime["api"], i) for i in ids), 90, "every meter to report")


def _energy_stamps(dsn: str, device_id: str, since: datetime, until: datetime) -> list[int]:
    rows = sql(dsn, "SELECT (extract(epoch FROM ts) * 1000)::bigint AS ms FROM monitoring.readings"
                    " WHERE device_id = $1 AND quantity = $2 AND ts >= $3 AND ts < $4 ORDER BY ts",
               device_id, ENERGY, since, until)
    return [r["ms"] for r in rows]


def test_meters_answering_garbage_or_exceptions_stop_with_a_reason_while_others_continue(
        runtime: dict, sim_control: str) -> None:
    api, settings = runtime["api"], runtime["settings"]
    _all_reporting(runtime)
    # Three meters behind the same gateway port: one garbage, one exception code 2, one healthy.
    port = runtime["manifest"][-1]["port"]
    same_port = sorted((m for m in runtime["manifest"] if m["port"] == port), key=lambda m: m["unit_id"])
    garbage, failing, healthy = (m["device_id"] for m in same_port[:3])
    assert http("POST", f"{sim_control}/faults", {"device_id": garbage, "fault": "garbage"})[0] == 200
    assert http("POST", f"{sim_control}/faults", {"device_id": failing, "fault": "exception", "code": 2})[0] == 200
    try:
        def reasons() -> dict | None:
            d = _devices(api)
            ok = (d[garbage]["last_failure_kind"] == "bad_response"
                  and d[failing]["last_failure_kind"] == "exception_code"
                  and d[garbage]["status"] == d[failing]["status"] == "offline")
            return d if ok else None

        devices = wait_for(reasons, 30, "both broken meters to go offline with a recorded reason")
        assert "2" in devices[failing]["last_failure"]
        assert devices[garbage]["last_failure"]
        frozen = {i: _current_ts(api, i) for i in (garbage, failing)}
        others = {m["device_id"]: _current_ts(api, m["device_id"]) for m in runtime["manifest"]
                  if m["device_id"] not in frozen}
        time.sleep(4 * POLL_INTERVAL_S)
        assert {i: _current_ts(api, i) for i in frozen} == frozen  # their readings stopped
        moved = {i for i, ts in others.items() if _current_ts(api, i) != ts}
        assert moved == set(others), f"meters that stopped although healthy: {set(others) - moved}"
        assert _devices(api)[healthy]["status"] == "online"

        dead = [codec.decode_dead_letter(v) for _, v in read_topic(settings.kafka_bootstrap,
                                                                   settings.topic(topics.READINGS_DLQ))]
        mine = [d for d in dead if d.get("device_id") == garbage]
        assert mine and mine[0]["reason"] and mine[0]["raw"], "undecodable answers go to the DLQ with raw words"
    finally:
        http("DELETE", f"{sim_control}/faults")
    wait_for(lambda: all(_devices(api)[i]["status"] == "online" for i in (garbage, failing)), 30,
             "both meters to come back online once they answer properly")


def test_replaced_meter_counter_is_flagged_and_announced(runtime: dict, sim_control: str) -> None:
    settings = runtime["settings"]
    _all_reporting(runtime)
    device_id = runtime["manifest"][1]["device_id"]
    assert http("POST", f"{sim_control}/faults", {"device_id": device_id, "fault": "reset"})[0] == 200
    try:
        flagged = wait_for(lambda: sql(settings.pg_dsn, "SELECT ts, value FROM monitoring.readings WHERE device_id = $1"
                                       " AND quantity = $2 AND quality & 1 = 1", device_id, ENERGY),
                           30, "a reading flagged COUNTER_DECREASE")
        assert len(flagged) == 1
        events = [codec.decode_event(v) for k, v in read_topic(settings.kafka_bootstrap,
                                                               settings.topic(topics.DEVICE_EVENTS))
                  if k == device_id.encode()]
        assert any(e.kind == "counter_decrease" for e in events)
    finally:
        http("DELETE", f"{sim_control}/faults")


def test_killed_supervisor_comes_back_and_rebuilds_the_pipeline(runtime: dict) -> None:
    supervisor = runtime["supervisor"]
    _all_reporting(runtime)
    before = ray.get(supervisor.status.remote())
    os.kill(before["pid"], signal.SIGKILL)

    def rebuilt() -> dict | None:
        try:
            status = ray.get(supervisor.status.remote(), timeout=5)
        except (ray.exceptions.RayError, TimeoutError):
            return None
        children = status["children"]
        fresh = status["pid"] != before["pid"] and children.keys() == before["children"].keys()
        return status if fresh and all(c["last_ping"] for c in children.values()) else None

    status = wait_for(rebuilt, 90, "the restarted supervisor to rebuild every child")
    old_pids = {c["last_ping"]["pid"] for c in before["children"].values()}
    assert not old_pids & {c["last_ping"]["pid"] for c in status["children"].values()}
    since = datetime.now(timezone.utc)
    ids = [m["device_id"] for m in runtime["manifest"]]
    wait_for(lambda: all((_current_ts(runtime["api"], i) or "") > since.isoformat() for i in ids), 60,
             "every meter to report again after the supervisor came back")
