"""The connections API over the real Serve app, PostgreSQL, the supervisor and simulated Modbus meters:
CRUD with versions and owners, the validation messages, conflicts, scoping by organisation, dry runs
(a Modbus read of each device with its typed failure, an MQTT sample decoded), and a meter added over
HTTP reaching PostgreSQL, then stopping when deleted."""
from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import ray

from meterray.identity import Role
from meterray.settings import Settings
from protocols.modbus.profiles import PROFILES
from tests.auth_headers import bearer
from tests.conftest import wait_for
from tests.pipeline.helpers import http, sql
from tests.ports import port

SIM_PORT = port("connections-sim")  # this module's simulator, 2 meters on one port
CLOSED_PORT = port("connections-closed")  # nothing listens here
ORG_A, ORG_B = uuid.uuid4(), uuid.uuid4()
ENERGY = "1-0:1.8.0"


def call(method: str, url: str, headers: dict[str, str] | None, body: Any = None) -> tuple[int, Any]:
    return http(method, url, body, headers, timeout_s=60)  # a dry run waits for a meter's timeout


@pytest.fixture(scope="module")
def meters(runtime: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict]]:
    from meterray.app.demo import start_simulator

    manifest = tmp_path_factory.mktemp("connections-sim") / "manifest.json"
    proc = start_simulator(runtime["settings"], 2, 2, SIM_PORT, manifest)
    yield json.loads(Path(manifest).read_text())
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)


def _tokens(settings: Settings) -> dict[str, dict[str, str]]:
    return {"a": bearer(settings, Role.OPERATOR, ORG_A), "b": bearer(settings, Role.OPERATOR, ORG_B),
            "customer_a": bearer(settings, Role.CUSTOMER, ORG_A), "staff": bearer(settings, Role.ADMIN, None)}


def _modbus(cid: str, port: int, devices: list[dict], interval: float = 1.0) -> dict:
    return {"kind": "modbus_tcp", "connection_id": cid, "host": "127.0.0.1", "port": port,
            "poll_interval_s": interval, "timeout_s": 0.5, "devices": devices}


def _device(device_id: str, unit_id: int, profile: str = "sdm630", name: str | None = None) -> dict:
    return {"device_id": device_id, "unit_id": unit_id, "profile": profile, **({"name": name} if name else {})}


def _mqtt(cid: str, settings: Settings, **extra: Any) -> dict:
    return {"kind": "mqtt", "connection_id": cid, "host": settings.mqtt_host, "port": settings.mqtt_port,
            "topic_filter": f"conn-test/{cid}/meterray/v1/+/readings", **extra}


def _children(runtime: dict, role: str) -> dict[str, list[str]]:
    status = ray.get(runtime["supervisor"].status.remote())
    return {n: c["connection_ids"] for n, c in status["children"].items() if c["role"] == role}


def test_connections_are_validated_versioned_owned_and_scoped(runtime: dict) -> None:
    settings, api = runtime["settings"], runtime["api"]
    url = f"{api}/api/v1/connections"
    t = _tokens(settings)
    cid, mid = "api-gw-1", "api-mqtt-1"
    doc = _modbus(cid, CLOSED_PORT, [_device("api-m-1", 1, name="Feeder 1"), _device("api-m-2", 2)], interval=5)

    # Who may do what.
    assert call("GET", url, None)[0] == 401
    assert call("POST", url, t["customer_a"], doc)[0] == 403

    # Every problem at once, each naming the field and what to do.
    bad = _modbus(cid, 70000, [_device("api-m-1", 250), _device("api-m-2", 2, "no-such-meter"),
                               _device("api-m-3", 2, name="x" * 300)], interval=0.5)
    status, body = call("POST", url, t["a"], bad)
    assert status == 422, body
    problems = body["detail"]["problems"]
    assert any("devices[2].name" in p and "1..200 characters" in p for p in problems), problems
    assert any("port" in p and "less than or equal to 65535" in p for p in problems), problems
    assert any("devices[0].unit_id" in p and "unit id 250 is reserved" in p for p in problems), problems
    assert any("devices[1].profile" in p and f"known profiles: {', '.join(sorted(PROFILES))}" in p
               for p in problems), problems
    status, body = call("POST", url, t["a"], {**doc, "kind": "bacnet"})
    assert status == 422 and "kind: must be one of 'modbus_tcp', 'mqtt'" in body["detail"]["problems"][0]
    status, body = call("POST", url, t["a"], _mqtt(mid, settings, topic_filter="a/#/b"))
    assert status == 422 and "'#' must be a whole level at the end" in body["detail"]["problems"][0], body

    status, body = call("POST", url, t["a"], doc)
    assert status == 201 and body["version"] == 1 and body["organisation_id"] == str(ORG_A), body
    assert body["config"]["devices"] == [{**_device("api-m-1", 1), "name": "Feeder 1"},
                                         {**_device("api-m-2", 2), "name": "api-m-2"}]
    try:
        # Conflicts: the id (in either kind), a device id another connection has.
        status, body = call("POST", url, t["a"], doc)
        assert status == 409 and "connection_id: 'api-gw-1' is taken" in body["detail"]["problems"], body
        assert call("POST", url, t["a"], _mqtt(cid, settings))[0] == 409
        status, body = call("POST", url, t["a"], _modbus("api-gw-2", CLOSED_PORT, [_device("api-m-2", 7)]))
        assert status == 409 and "device id 'api-m-2' is already registered" in body["detail"]["problems"][0], body
        assert call("GET", f"{url}/api-gw-2", t["a"])[0] == 404  # nothing of it was stored

        # An MQTT connection beside it; the supervisor starts its shard.
        status, body = call("POST", url, t["a"], _mqtt(mid, settings, auto_register=True))
        assert status == 201 and body["kind"] == "mqtt" and body["config"]["auto_register"] is True, body
        wait_for(lambda: [mid] in _children(runtime, "mqtt-shard").values(), 30, "an MQTT shard for the new connection")

        # Scope: the owner's organisation and platform staff see them; another organisation does not.
        assert call("GET", f"{url}/{cid}", t["b"])[0] == 404
        assert call("PUT", f"{url}/{cid}", t["b"], doc)[0] == 404
        assert call("DELETE", f"{url}/{cid}", t["b"])[0] == 404
        assert call("POST", f"{url}/{cid}/dry-run", t["b"], {})[0] == 404
        assert call("GET", url, t["b"])[1]["connections"] == []
        assert call("GET", f"{url}/{cid}", t["customer_a"])[0] == 200  # reading needs no role
        status, page = call("GET", f"{url}?limit=1", t["a"])
        assert status == 200 and [c["connection_id"] for c in page["connections"]] == [cid], page
        status, page2 = call("GET", f"{url}?limit=1&cursor={page['next_cursor']}", t["a"])
        assert [c["connection_id"] for c in page2["connections"]] == [mid] and page2["next_cursor"] is None, page2
        assert [c["connection_id"] for c in call("GET", f"{url}?kind=mqtt", t["a"])[1]["connections"]] == [mid]
        assert call("GET", f"{url}?cursor=garbage", t["a"])[0] == 422
        staff_ids = [c["connection_id"] for c in call("GET", f"{url}?limit=1000", t["staff"])[1]["connections"]]
        assert {cid, mid} <= set(staff_ids) and any(i.startswith("sim-") for i in staff_ids)  # the demo's too

        # A change is a new version; a kind change and a rename are refused.
        current = call("GET", f"{url}/{cid}", t["a"])[1]
        status, body = call("PUT", f"{url}/{cid}", t["a"], {**current["config"], "poll_interval_s": 10})
        assert status == 200 and body["version"] == 2 and body["config"]["poll_interval_s"] == 10, body
        status, body = call("PUT", f"{url}/{cid}", t["a"], _mqtt(cid, settings))
        assert status == 422 and "cannot change kind" in body["detail"]["problems"][0], body
        assert call("PUT", f"{url}/{cid}", t["a"], {**doc, "connection_id": "other"})[0] == 422
        status, body = call("POST", url, t["a"], {**_modbus("api-gw-3", CLOSED_PORT, [_device("api-m-9", 1)]),
                                                  "organisation_id": str(ORG_B)})
        assert status == 422 and "organisation_id" in body["detail"]["problems"][0], body

        # Devices behind the gateway: unit id taken → 409, a good one added, one removed, never the last.
        status, body = call("POST", f"{url}/{cid}/devices", t["a"], _device("api-m-3", 2))
        assert status == 409 and "unit_id: 2 is device 'api-m-2'" in body["detail"]["problems"][0], body
        status, body = call("POST", f"{url}/{cid}/devices", t["a"], _device("api-m-3", 3, "wb-map3e", "Pump"))
        assert status == 201 and body["version"] == 3 and len(body["config"]["devices"]) == 3, body
        status, body = call("POST", f"{url}/{cid}/devices", t["a"], _device("api-m-4", 0))
        assert status == 422 and "unit id 0 only addresses a single meter" in body["detail"]["problems"][0], body
        rows = sql(settings.pg_dsn, "SELECT id, name, organisation_id FROM devices.devices WHERE connection_id = $1"
                                    " ORDER BY id", cid)
        assert [(r["id"], r["name"], r["organisation_id"]) for r in rows] == [
            ("api-m-1", "Feeder 1", ORG_A), ("api-m-2", "api-m-2", ORG_A), ("api-m-3", "Pump", ORG_A)]
        assert call("DELETE", f"{url}/{cid}/devices/api-m-1", t["a"])[0] == 204
        assert call("DELETE", f"{url}/{cid}/devices/api-m-1", t["a"])[0] == 404
        assert call("DELETE", f"{url}/{cid}/devices/api-m-2", t["a"])[0] == 204
        status, body = call("DELETE", f"{url}/{cid}/devices/api-m-3", t["a"])
        assert status == 409 and "DELETE /api/v1/connections/api-gw-1 instead" in body["detail"]["problems"][0]
    finally:
        assert call("DELETE", f"{url}/{cid}", t["a"])[0] == 204
        assert call("DELETE", f"{url}/{mid}", t["a"])[0] == 204
    assert call("GET", f"{url}/{cid}", t["a"])[0] == 404
    assert not sql(settings.pg_dsn, "SELECT 1 FROM devices.devices WHERE id LIKE 'api-m-%'")
    wait_for(lambda: [mid] not in _children(runtime, "mqtt-shard").values(), 30, "the MQTT shard to stop")
    status, versions = call("GET", f"{url}/{cid}/versions", t["a"])
    assert status == 200 and [(v["version"], v["deleted"]) for v in versions] == \
        [(1, False), (2, False), (3, False), (4, False), (5, False), (6, True)], versions
    assert versions[0]["config"]["devices"][0]["name"] == "Feeder 1" and versions[0]["changed_by"] is not None
    assert call("GET", f"{url}/{cid}/versions", t["b"])[0] == 404


def test_modbus_dry_run_reads_each_device_once_and_types_each_failure(runtime: dict, meters: list[dict]) -> None:
    settings, api = runtime["settings"], runtime["api"]
    url = f"{api}/api/v1/connections"
    t = _tokens(settings)
    good, other = meters
    assert good["profile"] != other["profile"]
    doc = _modbus("dry-gw", SIM_PORT, [_device("dry-good", good["unit_id"], good["profile"]),
                                       _device("dry-no-unit", 9, good["profile"]),
                                       _device("dry-wrong-profile", other["unit_id"], good["profile"])])
    before = sql(settings.pg_dsn, "SELECT (SELECT count(*) FROM devices.devices) AS d,"
                                  " (SELECT count(*) FROM devices.connection_versions) AS v")[0]
    status, run = call("POST", f"{url}/dry-run", t["a"], {"config": doc})
    assert status == 200, run
    by_id = {d["device_id"]: d for d in run["devices"]}
    ok = by_id["dry-good"]
    assert ok["ok"] and ok["failure"] is None, ok
    energy = next(v for v in ok["values"] if v["quantity"] == ENERGY)
    assert energy["unit"] == "kWh" and energy["value"] > 0 and energy["quality"] == 0 and energy["quality_flags"] == []
    assert {v["quantity"] for v in ok["values"]} >= {ENERGY, "1-0:16.7.0", "1-0:32.7.0"}
    # A unit id nothing answers at, behind a gateway: exception 11, and the unit id is named as the suspect.
    f = by_id["dry-no-unit"]["failure"]
    assert f["kind"] == "exception_code" and f["exception_code"] == 11 and f["suspect"] == "unit_id", f
    assert "no device answering at unit id 9" in f["hint"]
    # The meter answers but refuses the other profile's requests (here: more registers than it serves at once).
    f = by_id["dry-wrong-profile"]["failure"]
    assert f["kind"] == "exception_code" and f["exception_code"] in (1, 2, 3) and f["suspect"] == "profile", f
    assert f"refuses the registers of profile {good['profile']!r}" in f["hint"]

    # Port closed: every device gets the refusal, the endpoint is the suspect.
    status, run = call("POST", f"{url}/dry-run", t["a"], {"config": {**doc, "port": CLOSED_PORT}})
    assert status == 200 and len(run["devices"]) == 3, run
    assert {(d["failure"]["kind"], d["failure"]["suspect"]) for d in run["devices"]} == {("connection_refused",
                                                                                          "endpoint")}
    # A meter that does not answer in time (the simulator's timeout fault): typed as a timeout.
    control = f"http://127.0.0.1:{SIM_PORT - 1}/faults"
    assert call("POST", control, None, {"device_id": good["device_id"], "fault": "timeout"})[0] == 200
    try:
        status, run = call("POST", f"{url}/dry-run", t["a"], {"config": {**doc, "devices": doc["devices"][:1]}})
        assert status == 200 and run["devices"][0]["failure"]["kind"] == "timeout", run
        assert run["devices"][0]["elapsed_ms"] >= 400
    finally:
        assert call("POST", control, None, {"device_id": good["device_id"], "fault": "none"})[0] == 200

    # Invalid documents are refused before anything is read; a dry run needs the write role.
    status, body = call("POST", f"{url}/dry-run", t["a"], {"config": {**doc, "timeout_s": 5}})
    assert status == 422 and "timeout_s 5.0 must be shorter than poll_interval_s" in body["detail"]["problems"][0]
    assert call("POST", f"{url}/dry-run", t["a"], {})[0] == 422
    assert call("POST", f"{url}/dry-run", t["customer_a"], {"config": doc})[0] == 403

    # Nothing was written by any dry run.
    after = sql(settings.pg_dsn, "SELECT (SELECT count(*) FROM devices.devices) AS d,"
                                 " (SELECT count(*) FROM devices.connection_versions) AS v")[0]
    assert dict(after) == dict(before)
    assert not sql(settings.pg_dsn, "SELECT 1 FROM monitoring.readings WHERE device_id LIKE 'dry-%' LIMIT 1")


def test_mqtt_dry_run_decodes_a_sample_with_the_connections_codec(runtime: dict) -> None:
    settings, api = runtime["settings"], runtime["api"]
    url = f"{api}/api/v1/connections"
    t = _tokens(settings)
    cid = "api-mqtt-dry"
    status, body = call("POST", url, t["a"], _mqtt(cid, settings, topic_filter=f"conn-test/{cid}/#",
                                                   payload_format="json", mapping={
        "device_from": "payload", "device_field": "meter", "ts_field": "t", "ts_format": "epoch_s",
        "values_field": "", "names": {"energy_wh": ENERGY}, "scale": {ENERGY: 0.001}}))
    assert status == 201, body
    try:
        now_s = int(time.time())
        topic = f"conn-test/{cid}/site-1"
        # The stored connection's mapping: a device id from the payload, Wh scaled into kWh.
        status, run = call("POST", f"{url}/{cid}/dry-run", t["a"], {"sample": {
            "topic": f"conn-test/{cid}/meterray/v1/x/readings", "payload": {"meter": "m-1", "t": now_s,
                                                                           "energy_wh": 1500}}})
        assert status == 200, run
        # The topic is meterray's own, so meterray's format applies there and this payload is refused.
        assert run["readings"] == [] and run["errors"][0].startswith("ts is missing"), run
        status, run = call("POST", f"{url}/{cid}/dry-run", t["a"], {"sample": {
            "topic": topic, "payload": json.dumps({"meter": "m-1", "t": now_s, "energy_wh": 1500})}})
        assert status == 200, run
        assert [(r["device_id"], r["ts_ms"], r["registered"]) for r in run["readings"]] == [("m-1", now_s * 1000,
                                                                                            False)]
        assert run["readings"][0]["values"] == [{"quantity": ENERGY, "value": 1.5, "unit": "kWh", "quality": 0,
                                                 "quality_flags": []}]
        assert run["errors"] == ["device(s) ['m-1'] are not registered and auto_register is off: the message would "
                                 "go to readings.dlq; register them or turn auto_register on"], run
        status, run = call("POST", f"{url}/{cid}/dry-run", t["a"], {"sample": {
            "topic": "elsewhere/site-1", "payload": {"meter": "m-1", "t": now_s, "energy_wh": 1500}}})
        assert status == 200 and len(run["readings"]) == 1, run
        assert run["errors"][0].startswith("topic 'elsewhere/site-1' does not match the connection's topic_filter"), run
        # A bad sample: its reason, as the shard would dead-letter it.
        status, run = call("POST", f"{url}/{cid}/dry-run", t["a"], {"sample": {
            "topic": topic, "payload": {"meter": "m-1", "t": "yesterday", "energy_wh": 1}}})
        assert status == 200 and run["readings"] == [], run
        assert run["errors"] == ["t must be epoch seconds (a number), got string 'yesterday' (the message would go "
                                 "to readings.dlq with this reason)"], run
        # An unsaved connection in meterray's own format, auto-registering: a clean decode.
        status, run = call("POST", f"{url}/dry-run", t["a"], {
            "config": _mqtt("api-mqtt-unsaved", settings, auto_register=True),
            "sample": {"topic": "conn-test/api-mqtt-unsaved/meterray/v1/m-7/readings",
                       "payload": {"ts": "2026-11-26T08:40:00Z", "values": {ENERGY: 12.5, "1-0:32.7.0": 230.1}}}})
        assert status == 200 and run["errors"] == [], run
        assert run["readings"][0]["device_id"] == "m-7" and len(run["readings"][0]["values"]) == 2
        status, body = call("POST", f"{url}/{cid}/dry-run", t["a"], {})
        assert status == 422 and body["detail"]["problems"][0].startswith("sample:"), body
        assert not sql(settings.pg_dsn, "SELECT 1 FROM devices.devices WHERE id IN ('m-1', 'm-7')")
    finally:
        assert call("DELETE", f"{url}/{cid}", t["a"])[0] == 204


def test_a_meter_added_over_http_reports_to_postgres_and_stops_when_deleted(runtime: dict,
                                                                            meters: list[dict]) -> None:
    settings, api = runtime["settings"], runtime["api"]
    url = f"{api}/api/v1/connections"
    t = _tokens(settings)
    cid = "api-live-gw"
    ids = [m["device_id"] for m in meters]
    doc = _modbus(cid, SIM_PORT, [_device(m["device_id"], m["unit_id"], m["profile"]) for m in meters])

    def latest() -> dict[str, datetime]:
        rows = sql(settings.pg_dsn, "SELECT device_id, max(ts) AS ts FROM monitoring.readings"
                                    " WHERE device_id = ANY($1::text[]) AND quantity = $2 GROUP BY device_id",
                   ids, ENERGY)
        return {r["device_id"]: r["ts"] for r in rows}

    created = time.monotonic()
    status, body = call("POST", url, t["a"], doc)
    assert status == 201, body
    try:
        wait_for(lambda: len(latest()) == len(ids), 60, "the meters added over HTTP to have readings in PostgreSQL")
        print(f"\nadded over HTTP → first readings of every meter in PostgreSQL in {time.monotonic() - created:.1f} s")
        # The monitoring API lists them, with their health.
        status, device = call("GET", f"{api}/api/v1/devices/{ids[0]}/readings/current", t["a"])
        assert status == 200, device
    finally:
        assert call("DELETE", f"{url}/{cid}", t["a"])[0] == 204
    deleted_at = datetime.now(timezone.utc)
    wait_for(lambda: ray.get(runtime["supervisor"].status.remote())["last_change"].get("removed") == [cid]
             or cid not in {c for ids_ in _children(runtime, "modbus-shard").values() for c in ids_}, 30,
             "the supervisor to stop polling the deleted connection")
    # Nothing of it arrives any more while the session's meters keep reporting: once every one of them has
    # a reading stamped 3 s after the deletion in PostgreSQL, a deleted meter still polled would have too.
    originals = [m["device_id"] for m in runtime["manifest"]]

    def originals_past(t: datetime) -> bool:
        rows = sql(settings.pg_dsn, "SELECT count(DISTINCT device_id) AS n FROM monitoring.readings"
                                    " WHERE device_id = ANY($1::text[]) AND ts >= $2", originals, t)
        return rows[0]["n"] == len(originals)

    wait_for(lambda: originals_past(deleted_at + timedelta(seconds=3)), 60, "the other meters to report on")
    assert all(ts < deleted_at + timedelta(seconds=2) for ts in latest().values()), (latest(), deleted_at)
