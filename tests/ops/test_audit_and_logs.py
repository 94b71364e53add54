"""Process events on the Kafka topic `audit` (actors/audit.py) and the actors' JSON logs (actors/logs.py),
read where an operator finds them: the topic, and each actor's log file in Ray's session directory."""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import orjson
import ray

from actors.logs import JsonFormatter
from meterray.domain import DeviceSpec, ModbusConnection
from meterray.mqtt_config import MqttConnection
from meterray.settings import Settings
from storage.kafka import topics
from storage.postgres import devices as device_repo
from storage.postgres.mqtt import delete_mqtt_connections, save_mqtt_connections
from tests.conftest import wait_for
from tests.pipeline.helpers import db, read_topic
from tests.ports import port

PROBE = "audit-probe"
CLOSED_PORT = port("audit-closed")  # nothing listens here: the probe's polls are refused, which is fine


def _events(settings: Settings) -> list[dict[str, Any]]:
    return [json.loads(v) for _, v in read_topic(settings.kafka_bootstrap, settings.topic(topics.AUDIT))]



def _status(ops_runtime: dict[str, Any]) -> dict[str, Any]:
    status: dict[str, Any] = ray.get(ops_runtime["supervisor"].status.remote())
    return status


def test_starts_restarts_and_reconfigurations_are_on_the_audit_topic(ops_runtime: dict[str, Any]) -> None:
    settings: Settings = ops_runtime["settings"]
    children = _status(ops_runtime)["children"]
    events = _events(settings)
    assert {"supervisor_started"} <= {e["kind"] for e in events}
    started = {e["actor"] for e in events if e["kind"] == "actor_started"}
    assert set(children) <= started, set(children) - started
    assert all(e["ts"] > 1_700_000_000_000 and e["node_id"] for e in events)

    # A restart: the supervisor replaces a writer that died (it resumes from its committed offsets).
    before = children["pg-writer-0"]["restarts"]
    ray.kill(ray.get_actor("pg-writer-0", namespace=settings.ray_namespace), no_restart=True)
    wait_for(lambda: _status(ops_runtime)["children"]["pg-writer-0"]["restarts"] > before, 60, "the writer replaced")

    # A reconfiguration: a connection added, then removed.
    probe = ModbusConnection(PROBE, "127.0.0.1", CLOSED_PORT, 5.0, 1.0, (DeviceSpec(f"{PROBE}-1", "sdm630", 1),))
    db(settings, device_repo.save_modbus_connections, [probe])
    wait_for(lambda: PROBE in {c for ch in _status(ops_runtime)["children"].values() for c in ch["connection_ids"]},
             60, "the probe connection placed")
    db(settings, device_repo.delete_connections, [PROBE])
    wait_for(lambda: PROBE not in {c for ch in _status(ops_runtime)["children"].values() for c in ch["connection_ids"]},
             60, "the probe connection removed")

    # An MQTT connection added and removed: its shard is a reconfiguration of the MQTT sources.
    mqtt = MqttConnection(f"{PROBE}-mqtt", "127.0.0.1", settings.mqtt_port, f"{settings.kafka_topic_prefix}audit/#")
    shard = f"mqtt-shard-{PROBE}-mqtt-0"
    db(settings, save_mqtt_connections, [mqtt])
    wait_for(lambda: shard in _status(ops_runtime)["children"], 60, "the MQTT probe's shard started")
    db(settings, delete_mqtt_connections, [mqtt.connection_id])
    wait_for(lambda: shard not in _status(ops_runtime)["children"], 60, "the MQTT probe's shard stopped")

    def seen() -> list[dict[str, Any]] | None:
        evs = _events(settings)
        kinds = {(e["kind"], e["actor"]) for e in evs}
        modbus = [e["details"] for e in evs if e["kind"] == "reconfigured" and e["details"].get("source") == "modbus"]
        added = any(PROBE in d["added"] for d in modbus)
        removed = any(PROBE in d["removed"] for d in modbus)
        mqtt_changes = [e["details"] for e in evs
                        if e["kind"] == "reconfigured" and e["details"].get("source") == "mqtt"]
        mqtt_ok = any(shard in d["added"] for d in mqtt_changes) and any(shard in d["removed"] for d in mqtt_changes)
        return evs if ("actor_restarted", "pg-writer-0") in kinds and added and removed and mqtt_ok else None
    events = wait_for(seen, 60, "the restart and both reconfigurations on the audit topic")  # type: ignore[assignment]
    restart = [e for e in events if e["kind"] == "actor_restarted" and e["actor"] == "pg-writer-0"][-1]
    assert restart["role"] == "pg-writer" and restart["details"]["reason"]  # why it was declared gone
    again = [e for e in events if e["kind"] == "actor_started" and e["actor"] == "pg-writer-0"]
    assert again[-1]["details"]["restarts"] == restart["details"]["restarts"] >= 1


def _log_lines(pid: int) -> list[dict[str, Any]]:
    """The JSON lines of the actor process `pid`, from its log file in Ray's session directory."""
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    out = []
    for path in logs.glob(f"worker-*-{pid}.err"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    pass
    return out


def test_actor_logs_are_json_lines_with_the_actor_and_the_device(ops_runtime: dict[str, Any]) -> None:
    from confluent_kafka import Producer

    settings: Settings = ops_runtime["settings"]
    status = _status(ops_runtime)
    assert any(x.get("actor") == "supervisor" and x["level"] in {"INFO", "WARNING"} for x in _log_lines(status["pid"]))

    # A record the device processor cannot decode is dead-lettered, and its log line names the device.
    device = "json-log-probe"
    p = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    p.produce(settings.topic(topics.READINGS_RAW), b"{broken", device.encode(),
              partition=topics.partition_for(device, settings.kafka_partitions))
    assert p.flush(30) == 0

    def line() -> dict[str, Any] | None:
        pid = _status(ops_runtime)["children"]["device-processor-0"]["last_ping"]["pid"]
        return next((x for x in _log_lines(pid) if x.get("device_id") == device), None)
    found = wait_for(line, 60, "the device processor's log line about the dead letter")
    assert isinstance(found, dict)
    assert found["actor"] == "device-processor-0" and found["level"] == "WARNING"
    assert found["topic"] == settings.topic(topics.READINGS_RAW) and "dead-lettered" in found["message"]


def test_the_formatter_carries_extra_fields_and_exceptions() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("modbus-shard-7"))
    logger = logging.getLogger("tests.ops.formatter")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("%s: refusing %d device(s)", "c1", 2, extra={"connection_id": "c1"})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed", extra={"device_id": "m-1"})
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(x) for x in out.getvalue().splitlines())
    assert first["message"] == "c1: refusing 2 device(s)" and first["connection_id"] == "c1"
    assert first["actor"] == "modbus-shard-7" and first["level"] == "WARNING" and "device_id" not in first
    assert first["ts"].endswith("+00:00")
    assert second["device_id"] == "m-1" and "ValueError: boom" in second["exception"]
