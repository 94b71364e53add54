"""Faults on the real pipeline: meters answering malformed frames or exception codes, a meter
reporting "no value" for one quantity, a replaced meter whose counter restarts. A killed shard is in
test_outages.py."""
from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timezone

import ray

from protocols.modbus.profiles import PROFILES
from storage.kafka import codec, topics
from tests.conftest import POLL_INTERVAL_S, wait_for
from tests.pipeline.helpers import all_devices, http, platform_admin, read_topic, sql

ENERGY = "1-0:1.8.0"


def _devices(api: str) -> dict[str, dict]:
    return {d["id"]: d for d in all_devices(api)}


def _current_ts(api: str, device_id: str) -> str | None:
    status, body = http("GET", f"{api}/api/v1/devices/{device_id}/readings/current", headers=platform_admin())
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
    # Three meters behind the same gateway port: one answers malformed frames (one register short:
    # nothing can be decoded), one answers exception code 2, one is healthy.
    port = runtime["manifest"][-1]["port"]
    same_port = sorted((m for m in runtime["manifest"] if m["port"] == port), key=lambda m: m["unit_id"])
    garbage, failing, healthy = (m["device_id"] for m in same_port[:3])
    fault_ms = int(time.time() * 1000)
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
        assert "answer holds" in devices[garbage]["last_failure"]  # the reason says what was wrong
        others = {m["device_id"]: _current_ts(api, m["device_id"]) for m in runtime["manifest"]
                  if m["device_id"] not in (garbage, failing)}
        # Every other meter, the healthy one on the same gateway included, goes on reporting.
        wait_for(lambda: {i for i, ts in others.items() if _current_ts(api, i) == ts} == set(), 60,
                 "every healthy meter to report a newer reading")
        # The broken ones stopped: nothing of theirs is stamped after the slot in flight at the fault.
        late = sql(settings.pg_dsn, "SELECT device_id, count(*) AS n FROM monitoring.readings WHERE device_id = ANY($1)"
                   " AND ts > $2 GROUP BY device_id", [garbage, failing],
                   datetime.fromtimestamp((fault_ms + 1000 * POLL_INTERVAL_S) / 1000, timezone.utc))
        assert not late, f"readings of broken meters after their fault: {[dict(r) for r in late]}"
        assert _devices(api)[healthy]["status"] == "online"

        dead = [codec.decode_dead_letter(v) for _, v in read_topic(settings.kafka_bootstrap,
                                                                   settings.topic(topics.READINGS_DLQ))]
        mine = [d for d in dead if d.get("device_id") == garbage]
        assert mine, "undecodable answers go to the DLQ"
        assert "answer holds" in mine[0]["reason"]
        assert mine[0]["raw"] and len(mine[0]["raw"]) % 2 == 0  # the register words that arrived, 2 bytes each
        assert not [d for d in dead if d.get("device_id") == failing]  # an exception code is no input to keep
    finally:
        http("DELETE", f"{sim_control}/faults")
    wait_for(lambda: all(_devices(api)[i]["status"] == "online" for i in (garbage, failing)), 30,
             "both meters to come back online once they answer properly")


def test_meter_reporting_no_value_for_one_quantity_stays_online_and_keeps_the_others(
        runtime: dict, sim_control: str) -> None:
    api, settings = runtime["api"], runtime["settings"]
    _all_reporting(runtime)
    last_port = runtime["manifest"][-1]["port"]
    # A WB-MAP3E (not one another test injects faults into) says "no value" for Urms L2: 0xFFFFFFFF,
    # the error value its template declares. The meter is healthy otherwise.
    device_id = [m["device_id"] for m in runtime["manifest"][2:]
                 if m["profile"] == "wb-map3e" and m["port"] != last_port][0]
    urms_l2 = "1-0:52.7.0"
    assert _devices(api)[device_id]["status"] == "online"
    before = _devices(api)[device_id]
    status, body = http("POST", f"{sim_control}/faults",
                        {"device_id": device_id, "fault": "no_value", "quantities": [urms_l2]})
    assert (status, body["quantities"]) == (200, [urms_l2])
    fault_at = datetime.now(timezone.utc)  # every poll of a slot from here on starts after the fault
    try:
        def later_polls() -> list[int]:
            stamps = _energy_stamps(settings.pg_dsn, device_id, fault_at, datetime.now(timezone.utc))
            return stamps if len(stamps) >= 5 else []

        wait_for(later_polls, 60, "five polls of the meter after the fault")
        rows = sql(settings.pg_dsn, "SELECT quantity, count(*) AS n, max(ts) AS last FROM monitoring.readings"
                                    " WHERE device_id = $1 AND ts >= $2 GROUP BY quantity", device_id, fault_at)
        after = {r["quantity"]: r["n"] for r in rows}
        # Every other quantity keeps arriving, poll after poll; Urms L2 is left out, never a made-up number.
        expected = {f.quantity for f in PROFILES["wb-map3e"].fields} - {urms_l2}
        assert set(after) == expected, set(after) ^ expected
        assert min(after.values()) >= 5
        last_l2 = sql(settings.pg_dsn, "SELECT max(ts) AS last FROM monitoring.readings"
                                       " WHERE device_id = $1 AND quantity = $2", device_id, urms_l2)[0]["last"]
        assert last_l2 is not None and last_l2 < fault_at  # it had values before the fault, none since

        # Still online, no failure recorded, no event and no dead letter for it since the fault.
        now = _devices(api)[device_id]
        assert now["status"] == "online"
        assert (now["last_failure_kind"], now["last_failure"]) == (before["last_failure_kind"],
                                                                   before["last_failure"])
        events = [codec.decode_event(v) for k, v in read_topic(settings.kafka_bootstrap,
                                                               settings.topic(topics.DEVICE_EVENTS))
                  if k == device_id.encode()]
        assert [e for e in events if e.ts_ms >= fault_at.timestamp() * 1000] == []
        dead = [codec.decode_dead_letter(v) for _, v in read_topic(settings.kafka_bootstrap,
                                                                   settings.topic(topics.READINGS_DLQ))]
        assert [d for d in dead if d.get("device_id") == device_id] == []
        # ...but not silent either: the shards count the values meters reported as unavailable.
        shards = ray.get(runtime["supervisor"].handles.remote("modbus-shard"))
        assert sum(p["values_unavailable"] for p in ray.get([s.ping.remote() for s in shards])) >= 5
    finally:
        http("DELETE", f"{sim_control}/faults")
    wait_for(lambda: sql(settings.pg_dsn, "SELECT 1 FROM monitoring.readings WHERE device_id = $1"
                                          " AND quantity = $2 AND ts > $3", device_id, urms_l2, fault_at),
             30, "Urms L2 to come back once the meter measures it again")


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
