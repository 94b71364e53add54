"""MQTT on the real services: the gateway simulator publishes to the shared Mosquitto at QoS 1,
MQTT shards (two per connection, one shared subscription) take it through Kafka into PostgreSQL.

Every test has its own connection ids, topic prefix, device ids and share groups (under the run's
id), and the shards' client ids carry the run's Ray namespace, so parallel runs on the one broker
never take each other's messages. "Nothing lost" is checked as a user would: the count of data
points and their checksum in PostgreSQL equal what the broker acknowledged to the simulator.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import ray

from meterray.mqtt_config import JsonMapping, MqttConnection
from meterray.settings import Settings
from storage.kafka import codec, topics
from storage.postgres import mqtt as mqtt_repo
from tests.conftest import RUN_ID, wait_for
from tests.pipeline.helpers import all_devices, db, read_topic, sql

PREFIX = f"test-{RUN_ID}"



def _connection(name: str, **kw: Any) -> MqttConnection:
    settings = Settings.from_env()
    kw.setdefault("topic_filter", f"{PREFIX}/{name}/meterray/v1/+/readings")
    return MqttConnection(f"{PREFIX}-{name}", settings.mqtt_host, settings.mqtt_port, subscribers=2,
                          session_expiry_s=300, **kw)


def _simulate(settings: Settings, name: str, *args: str, background: bool = False) -> Any:
    cmd = [sys.executable, "-m", "simulators.mqtt_gateway", "--host", settings.mqtt_host, "--port",
           str(settings.mqtt_port), "--prefix", f"{PREFIX}/{name}", "--device-prefix", f"{PREFIX}-{name}-",
           "--client-id", f"{PREFIX}-{name}-sim", "--seed", "7", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc if background else _result(proc)


def _result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-2000:]
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _in_pg(settings: Settings, device_prefix: str) -> tuple[int, float]:
    [row] = sql(settings.pg_dsn, "SELECT count(*) AS n, coalesce(sum(value), 0) AS s FROM monitoring.readings"
                                 " WHERE device_id LIKE $1", device_prefix + "%")
    return row["n"], row["s"]


def _all_in_pg(settings: Settings, device_prefix: str, published: dict[str, Any], timeout_s: float = 90) -> None:
    expected = (published["datapoints"], published["checksum"])
    wait_for(lambda: _in_pg(settings, device_prefix) == expected, timeout_s,
             f"{expected[0]} data points (checksum {expected[1]}) of {device_prefix} in PostgreSQL")


def _shards(runtime: dict, connection_id: str) -> dict[str, dict]:
    status = ray.get(runtime["supervisor"].status.remote())
    return {n: c for n, c in status["children"].items()
            if c["role"] == "mqtt-shard" and c["connection_ids"] == [connection_id]}


def _pings(runtime: dict, connection_id: str) -> list[dict]:
    handles = ray.get(runtime["supervisor"].handles.remote("mqtt-shard"))
    return [p for p in ray.get([h.ping.remote() for h in handles]) if p["connection"] == connection_id]


def _subscribed(runtime: dict, conn: MqttConnection) -> bool:
    pings = _pings(runtime, conn.connection_id)
    return len(pings) == conn.subscribers and all(p["subscribed"] for p in pings)


@pytest.fixture
def mqtt_connections(runtime: dict) -> Iterator[list[MqttConnection]]:
    """Connections a test registers (appended to the list); removed after it."""
    made: list[MqttConnection] = []
    yield made
    db(runtime["settings"], mqtt_repo.delete_mqtt_connections, [c.connection_id for c in made])


def _register(runtime: dict, made: list[MqttConnection], *conns: MqttConnection) -> None:
    made.extend(conns)
    db(runtime["settings"], mqtt_repo.save_mqtt_connections, list(conns))
    for c in conns:
        wait_for(lambda c=c: _subscribed(runtime, c), 60, f"both shards of {c.connection_id} to subscribe")


def _dead_letters(settings: Settings, connection_id: str) -> list[dict[str, Any]]:
    out = [codec.decode_dead_letter(v) for _, v in read_topic(settings.kafka_bootstrap,
                                                               settings.topic(topics.READINGS_DLQ))]
    return [d for d in out if d.get("connection") == connection_id]


def test_own_format_end_to_end_with_auto_registration_duplicates_late_and_malformed(
        runtime: dict, mqtt_connections: list[MqttConnection]) -> None:
    settings, api = runtime["settings"], runtime["api"]
    conn = _connection("e2e", auto_register=True)
    _register(runtime, mqtt_connections, conn)
    published = _simulate(settings, "e2e", "--meters", "40", "--rate", "150", "--count", "600",
                          "--duplicates", "0.05", "--late", "0.05", "--malformed", "0.05")
    assert published["malformed"] > 0 and published["duplicates"] > 0 and published["late"] > 0
    _all_in_pg(settings, f"{PREFIX}-e2e-", published)
    # The devices registered themselves and show in the API as MQTT devices.
    devices = {d["id"]: d for d in all_devices(api) if d["id"].startswith(f"{PREFIX}-e2e-")}
    assert len(devices) == 40 and {d["protocol"] for d in devices.values()} == {"mqtt"}
    wait_for(lambda: all(d["status"] == "online" for d in all_devices(api) if d["id"] in devices), 30,
             "every MQTT device online")
    # Malformed messages are dead-lettered with their reason, one record each.
    dead = wait_for(lambda: (d := _dead_letters(settings, conn.connection_id)) and len(d) >= published["malformed"]
                    and d, 60, "the malformed messages in readings.dlq")
    assert isinstance(dead, list) and len(dead) == published["malformed"]
    reasons = {d["reason"].split(" ")[0] for d in dead}
    assert reasons <= {"not", "values:", "payload"}, reasons  # invalid JSON, unknown OBIS, non-number
    # Both shards of the shared subscription took part, and every message was acknowledged.
    pings = _pings(runtime, conn.connection_id)
    assert all(p["messages"] > 0 for p in pings), pings
    assert sum(p["acked"] for p in pings) >= published["published"]


def test_gateway_batches_and_unknown_devices_refused_when_registration_is_off(
        runtime: dict, mqtt_connections: list[MqttConnection]) -> None:
    settings = runtime["settings"]
    conn = _connection("gw", topic_filter=f"{PREFIX}/gw/gateways/+/batch", payload_format="gateway")
    known = [f"{PREFIX}-gw-{i:06d}" for i in range(6)]  # 6 of the gateway's 8 meters are registered
    db(settings, mqtt_repo.register_mqtt_devices, known)
    _register(runtime, mqtt_connections, conn)
    published = _simulate(settings, "gw", "--format", "gateway", "--meters", "6", "--per-message", "12",
                          "--rate", "20", "--count", "40")
    _all_in_pg(settings, f"{PREFIX}-gw-", published)
    # Two meters the registry does not know: their readings are refused with the reason, not stored.
    stranger = _simulate(settings, "gw", "--format", "gateway", "--meters", "2", "--first", "6",
                         "--per-message", "4", "--rate", "20", "--count", "5")
    dead = wait_for(lambda: len(d := _dead_letters(settings, conn.connection_id)) >= 5 and d, 60,
                    "the strangers' batches in readings.dlq")
    assert isinstance(dead, list) and len(dead) == stranger["published"]
    assert all("unknown device(s)" in d["reason"] and "does not register devices automatically" in d["reason"]
               for d in dead)
    assert _in_pg(settings, f"{PREFIX}-gw-000006")[0] == 0
    assert _in_pg(settings, f"{PREFIX}-gw-") == (published["datapoints"], published["checksum"])
    assert not {f"{PREFIX}-gw-000006", f"{PREFIX}-gw-000007"} & {d["id"] for d in all_devices(runtime["api"])}


def test_json_mapping_connection(runtime: dict, mqtt_connections: list[MqttConnection]) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    settings = runtime["settings"]
    mapping = JsonMapping(device_from="payload", device_field="serial", ts_field="time", ts_format="epoch_s",
                          values_field="", names=(("e_wh", "1-0:1.8.0"), ("u", "1-0:32.7.0")),
                          scale=(("1-0:1.8.0", 0.001),))
    conn = _connection("json", topic_filter=f"{PREFIX}/json/#", payload_format="json", mapping=mapping,
                       auto_register=True)
    _register(runtime, mqtt_connections, conn)
    device = f"{PREFIX}-json-m1"
    t = int(time.time())
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(settings.mqtt_host, settings.mqtt_port)
    client.loop_start()
    try:
        for i in range(3):
            info = client.publish(f"{PREFIX}/json/site", json.dumps({"serial": device, "time": t - 10 + i,
                                                                     "e_wh": 1500 + i, "u": 231, "rssi": -60}), qos=1)
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
    rows = wait_for(lambda: (r := sql(settings.pg_dsn, "SELECT quantity, value, unit FROM monitoring.readings "
                                      "WHERE device_id = $1 ORDER BY ts, quantity", device)) and len(r) == 6 and r,
                    60, "six values of the JSON device")
    assert isinstance(rows, list)
    assert [(r["quantity"], r["value"], r["unit"]) for r in rows[:2]] == [("1-0:1.8.0", 1.5, "kWh"),
                                                                          ("1-0:32.7.0", 231.0, "V")]


def test_sigkill_of_an_mqtt_shard_loses_no_published_message(
        runtime: dict, mqtt_connections: list[MqttConnection]) -> None:
    settings = runtime["settings"]
    conn = _connection("kill", auto_register=True)
    _register(runtime, mqtt_connections, conn)
    before = _shards(runtime, conn.connection_id)
    sim = _simulate(settings, "kill", "--meters", "20", "--rate", "60", "--seconds", "15", background=True)
    device_prefix = f"{PREFIX}-kill-"
    wait_for(lambda: _in_pg(settings, device_prefix)[0] > 0, 60, "the first readings of the stream")
    victim = next(p for p in _pings(runtime, conn.connection_id) if p["index"] == 0)
    os.kill(victim["pid"], signal.SIGKILL)
    published = _result(sim)
    assert published["all_acknowledged"]
    _all_in_pg(settings, device_prefix, published, timeout_s=120)
    after = _shards(runtime, conn.connection_id)
    assert sum(c["restarts"] for c in after.values()) == sum(c["restarts"] for c in before.values()) + 1
    pings = _pings(runtime, conn.connection_id)
    assert victim["pid"] not in {p["pid"] for p in pings}
    assert all(p["subscribed"] for p in pings)


def test_changing_one_mqtt_connection_leaves_the_other_streams_uninterrupted(
        runtime: dict, mqtt_connections: list[MqttConnection]) -> None:
    settings = runtime["settings"]
    steady, changing = _connection("steady", auto_register=True), _connection("changing", auto_register=True)
    _register(runtime, mqtt_connections, steady, changing)
    status0 = ray.get(runtime["supervisor"].status.remote())
    steady0 = {p["index"]: p for p in _pings(runtime, steady.connection_id)}
    sims = [_simulate(settings, name, "--meters", "10", "--rate", "40", "--seconds", "12", background=True)
            for name in ("steady", "changing")]
    wait_for(lambda: _in_pg(settings, f"{PREFIX}-changing-")[0] > 0, 60, "the changing stream to flow")
    changed = MqttConnection(**{**_fields(changing), "inflight": 50})
    changed_at = time.time()
    db(settings, mqtt_repo.save_mqtt_connections, [changed])
    wait_for(lambda: ray.get(runtime["supervisor"].status.remote())["last_mqtt_change"].get("changed") ==
             [f"mqtt-shard-{changed.connection_id}-0", f"mqtt-shard-{changed.connection_id}-1"], 20,
             "the supervisor to reconfigure the changed connection's shards")
    steady_out, changing_out = (_result(p) for p in sims)
    _all_in_pg(settings, f"{PREFIX}-steady-", steady_out)
    _all_in_pg(settings, f"{PREFIX}-changing-", changing_out)  # reconnected, nothing lost
    # The steady connection's sessions were never touched: same processes, no reconnect.
    steady1 = {p["index"]: p for p in _pings(runtime, steady.connection_id)}
    assert {i: (p["pid"], p["connects"]) for i, p in steady1.items()} == \
        {i: (p["pid"], p["connects"]) for i, p in steady0.items()}
    # Its stream had no pause: readings in PostgreSQL every second of its run.
    rows = sql(settings.pg_dsn, "SELECT DISTINCT (extract(epoch FROM ts))::bigint AS s FROM monitoring.readings"
                                " WHERE device_id LIKE $1", f"{PREFIX}-steady-%")
    seconds = sorted(r["s"] for r in rows)
    assert seconds[-1] - seconds[0] + 1 - len(seconds) <= 0, "a second without a reading in the steady stream"
    # The Modbus meters kept their poll grid through the change: one energy reading per 1 s slot, none missed.
    window = (datetime.fromtimestamp(changed_at - 3, timezone.utc),
              datetime.fromtimestamp(changed_at + 5, timezone.utc))
    for meter in runtime["manifest"]:
        rows = sql(settings.pg_dsn, "SELECT (extract(epoch FROM ts) * 1000)::bigint AS ms FROM monitoring.readings"
                                    " WHERE device_id = $1 AND quantity = '1-0:1.8.0' AND ts >= $2 AND ts < $3"
                                    " ORDER BY ts", meter["device_id"], *window)
        stamps = [r["ms"] for r in rows]
        assert len(stamps) >= 7 and {b - a for a, b in zip(stamps, stamps[1:], strict=False)} == {1000}, \
            (meter["device_id"], stamps)
    # Neither the Modbus shards nor any other child restarted.
    status1 = ray.get(runtime["supervisor"].status.remote())
    assert {n: c["restarts"] for n, c in status1["children"].items() if n in status0["children"]} == \
        {n: c["restarts"] for n, c in status0["children"].items()}
    modbus = {n: (c["started"], c["stopped"]) for n, c in status0["children"].items() if c["role"] == "modbus-shard"}
    assert {n: (c["started"], c["stopped"]) for n, c in status1["children"].items() if n in modbus} == modbus


def _fields(c: MqttConnection) -> dict[str, Any]:
    return {f: getattr(c, f) for f in MqttConnection.__dataclass_fields__}


def test_demo_connection_registers_a_device_published_with_mosquitto_pub(runtime: dict) -> None:
    from meterray.app.demo import DEMO_MQTT_CONNECTION, register_demo_mqtt

    settings, api = runtime["settings"], runtime["api"]
    hint = register_demo_mqtt(settings)
    device = f"{PREFIX}-demo-meter"
    try:
        wait_for(lambda: _subscribed(runtime, MqttConnection(DEMO_MQTT_CONNECTION, "", 0, "", subscribers=1)), 60,
                 "the demo's MQTT shard to subscribe")
        # The command the demo prints, for another device id.
        command = hint.split("try\n  ", 1)[1].split("\n", 1)[0].replace("my-meter-1", device)
        subprocess.run(command, shell=True, check=True, timeout=30)
        listed = wait_for(lambda: next((d for d in all_devices(api) if d["id"] == device), None), 60,
                          "the published device in GET /api/v1/devices")
        assert isinstance(listed, dict) and listed["protocol"] == "mqtt"
        current = wait_for(lambda: sql(settings.pg_dsn, "SELECT quantity, value FROM monitoring.readings_current"
                                                        " WHERE device_id = $1 ORDER BY quantity", device), 60,
                           "its current readings")
        assert isinstance(current, list)
        assert [(r["quantity"], r["value"]) for r in current] == [("1-0:1.8.0", 1234.5), ("1-0:16.7.0", 850.0),
                                                                  ("1-0:32.7.0", 231.2)]
    finally:
        db(settings, mqtt_repo.delete_mqtt_connections, [DEMO_MQTT_CONNECTION])


def test_a_removed_connection_stops_its_shards_and_its_session(runtime: dict,
                                                               mqtt_connections: list[MqttConnection]) -> None:
    settings = runtime["settings"]
    conn = _connection("gone", auto_register=True)
    _register(runtime, mqtt_connections, conn)
    published = _simulate(settings, "gone", "--meters", "3", "--rate", "30", "--count", "30")
    _all_in_pg(settings, f"{PREFIX}-gone-", published)
    db(settings, mqtt_repo.delete_mqtt_connections, [conn.connection_id])
    wait_for(lambda: not _shards(runtime, conn.connection_id), 30, "the removed connection's shards to stop")
    assert not _pings(runtime, conn.connection_id)
    # Published after the removal: nobody reads it any more, nothing of it is stored.
    _simulate(settings, "gone", "--meters", "3", "--rate", "30", "--count", "10")
    time.sleep(3)  # a negative check: give a (wrongly) surviving subscriber time to store something
    assert _in_pg(settings, f"{PREFIX}-gone-") == (published["datapoints"], published["checksum"])
