"""Device health and data quality on the real pipeline, with the simulator's fault injection: a meter
that stops answering goes OFFLINE within its timeout and comes back, one event per transition; a
frozen meter is STALE and its values flagged; duplicates and late readings are flagged, never
doubled; a device processor killed mid-stream keeps every state and raises no false alarm; the
health API and the Prometheus metrics show all of it."""
from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from datetime import datetime, timezone
from typing import Any

import pytest
import ray

from meterray.domain import DeviceEvent, Quality, ReadingBatch, Value
from meterray.health import MIN_TIMEOUT_MS
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer
from tests.conftest import POLL_INTERVAL_S, wait_for
from tests.pipeline.helpers import http, platform_admin, read_topic, sql

ENERGY = "1-0:1.8.0"
TIMEOUT_MS = max(3 * int(POLL_INTERVAL_S * 1000), MIN_TIMEOUT_MS)  # the default for 1 s polling: 5 s


def _spare(runtime: dict) -> list[dict]:
    """Meters no other test injects faults into (test_faults takes manifest[1], the last port's
    meters and the first WB-MAP3E after them), in manifest order."""
    manifest = runtime["manifest"]
    last_port = manifest[-1]["port"]
    no_value = [m for m in manifest[2:] if m["profile"] == "wb-map3e" and m["port"] != last_port][0]
    taken = {manifest[1]["device_id"], no_value["device_id"]}
    return [m for m in manifest if m["port"] != last_port and m["device_id"] not in taken]


def _health(api: str, device_id: str) -> dict[str, Any]:
    status, body = http("GET", f"{api}/api/v1/devices/{device_id}/health", headers=platform_admin())
    assert status == 200, body
    return body


def _events(settings: Any, device_id: str | None = None) -> list[DeviceEvent]:
    raw = read_topic(settings.kafka_bootstrap, settings.topic(topics.DEVICE_EVENTS))
    return [codec.decode_event(v) for k, v in raw if device_id is None or k == device_id.encode()]


def _moves(events: list[DeviceEvent], since_ms: int) -> list[tuple[str, str]]:
    return [(e.previous.value, e.status.value) for e in events if e.kind == "status" and e.ts_ms >= since_ms]


def _wait_status(api: str, device_id: str, status: str, timeout_s: float) -> dict[str, Any]:
    return wait_for(lambda: (h := _health(api, device_id))["status"] == status and h, timeout_s,
                    f"{device_id} to be {status}")  # type: ignore[return-value]


def _all_online(runtime: dict) -> None:
    ids = [m["device_id"] for m in _spare(runtime)]
    wait_for(lambda: all(_health(runtime["api"], i)["status"] == "online" for i in ids), 90,
             "the spare meters to be online")


def test_a_meter_that_stops_answering_goes_offline_within_its_timeout_and_back_one_event_each(
        runtime: dict, sim_control: str) -> None:
    api, settings = runtime["api"], runtime["settings"]
    _all_online(runtime)
    device_id = _spare(runtime)[0]["device_id"]
    fault_ms = int(time.time() * 1000)
    assert http("POST", f"{sim_control}/faults", {"device_id": device_id, "fault": "timeout"})[0] == 200
    try:
        offline = _wait_status(api, device_id, "offline", TIMEOUT_MS / 1000 + 20)
        assert time.time() * 1000 - fault_ms < TIMEOUT_MS + 20_000  # within its timeout, plus the pipeline's lag
        assert offline["reasons"] == ["timeout"] and offline["link"] == "down"
        assert offline["consecutive_failures"] >= 2 and offline["last_failure_kind"] == "timeout"
        last_success = datetime.fromisoformat(offline["last_success"]).timestamp() * 1000
        went = offline["transitions"][0]
        assert (went["previous"], went["status"]) == ("degraded", "offline")
        # Not before its timeout: the failure that took it offline is stamped a timeout after the last success.
        assert datetime.fromisoformat(went["ts"]).timestamp() * 1000 - last_success >= TIMEOUT_MS
        # The device list filters by state, and the fleet summary counts it.
        status, page = http("GET", f"{api}/api/v1/devices?status=offline&limit=1000", headers=platform_admin())
        assert status == 200 and device_id in [d["id"] for d in page["devices"]]
        assert all(d["status"] == "offline" for d in page["devices"])
        status, summary = http("GET", f"{api}/api/v1/health/summary", headers=platform_admin())
        assert status == 200 and summary["by_status"]["offline"] >= 1 and summary["by_reason"]["timeout"] >= 1
        assert sum(summary["by_status"].values()) == summary["devices"]
        assert http("GET", f"{api}/api/v1/devices?status=sleeping", headers=platform_admin())[0] == 422
    finally:
        http("DELETE", f"{sim_control}/faults")
    back = _wait_status(api, device_id, "online", 30)
    assert back["consecutive_failures"] == 0 and back["link"] == "up" and back["reasons"] == []
    # Exactly one event per transition, on device-events and in the API's history alike.
    moves = [("online", "degraded"), ("degraded", "offline"), ("offline", "online")]
    assert _moves(_events(settings, device_id), fault_ms) == moves
    history = [(t["previous"], t["status"]) for t in reversed(_health(api, device_id)["transitions"])
               if datetime.fromisoformat(t["ts"]).timestamp() * 1000 >= fault_ms]
    assert history == moves


def test_a_frozen_meter_is_stale_and_its_values_are_flagged(runtime: dict, sim_control: str) -> None:
    api, settings = runtime["api"], runtime["settings"]
    _all_online(runtime)
    device_id = _spare(runtime)[1]["device_id"]
    fault_at = datetime.now(timezone.utc)
    assert http("POST", f"{sim_control}/faults", {"device_id": device_id, "fault": "frozen"})[0] == 200
    try:
        stale = _wait_status(api, device_id, "stale", 40)
        assert stale["reasons"] == ["frozen_value"] and (stale["link"], stale["data"]) == ("up", "frozen")
        flagged = wait_for(lambda: sql(settings.pg_dsn, "SELECT quantity, count(*) AS n FROM monitoring.readings"
                                                        " WHERE device_id = $1 AND ts >= $2 AND quality & $3 <> 0"
                                                        " GROUP BY quantity", device_id, fault_at, int(Quality.FROZEN)),
                           30, "frozen values flagged in the archive (the writer follows the processor)")
        assert ENERGY not in {r["quantity"] for r in flagged}  # an unchanged counter is no consumption, not frozen
        # The values themselves are kept as the meter sent them: one row per poll, never dropped.
        polls = sql(settings.pg_dsn, "SELECT count(DISTINCT ts) AS n FROM monitoring.readings"
                                     " WHERE device_id = $1 AND ts >= $2", device_id, fault_at)[0]["n"]
        assert polls >= 3
    finally:
        http("DELETE", f"{sim_control}/faults")
    _wait_status(api, device_id, "online", 30)
    assert _moves(_events(settings, device_id), int(fault_at.timestamp() * 1000)) == [
        ("online", "stale"), ("stale", "online")]


def test_duplicates_and_late_readings_are_flagged_never_doubled(runtime: dict) -> None:
    settings = runtime["settings"]
    device_id = "dq-health-1"
    sql(settings.pg_dsn, "INSERT INTO devices.devices (id, name, protocol, profile, unit_id)"
                         " VALUES ($1, $1, 'partner', 'sdm630', 1) ON CONFLICT DO NOTHING", device_id)
    now = int(time.time() * 1000) // 1000 * 1000

    def reading(ts: int, kwh: float) -> ReadingBatch:
        return ReadingBatch(device_id, ts, "partner-x", (Value(ENERGY, kwh, "kWh", 0),))

    late, first, second, older = now - 300_000, now - 2000, now - 1000, now - 100_000
    items = [reading(late, 99.0), reading(first, 100.0), reading(first, 100.0), reading(second, 100.001),
             reading(older, 99.5)]

    async def produce() -> None:
        raw = settings.topic(topics.READINGS_RAW)
        partition = topics.partition_for(device_id, settings.kafka_partitions)
        async with AsyncProducer(settings.kafka_bootstrap) as p:
            for item in items:  # one at a time: their order on the partition is the order above
                await p.send_many([(raw, partition, device_id.encode(), codec.encode(item))])
            await p.send_many([(raw, partition, device_id.encode(), b'{"device_id": "dq-health-1", "ts": "soon"}')])

    asyncio.run(produce())
    rows = wait_for(lambda: (r := sql(settings.pg_dsn, "SELECT ts, value, quality FROM monitoring.readings"
                                                       " WHERE device_id = $1 ORDER BY ts", device_id)) and len(r) >= 4
                    and r, 60, "the readings in the archive")
    stamps = [int(r["ts"].timestamp() * 1000) for r in rows]
    assert stamps == [late, older, first, second]  # the duplicate is one row, not two
    by_ts = {int(r["ts"].timestamp() * 1000): r for r in rows}
    assert by_ts[late]["quality"] == Quality.LATE and by_ts[late]["value"] == 99.0
    assert by_ts[older]["quality"] == Quality.OUT_OF_ORDER | Quality.LATE  # older than one seen: no decrease
    assert by_ts[second]["quality"] == 0 and by_ts[first]["value"] == 100.0
    # On the readings topic the second delivery of `first` carries DUPLICATE; the first one does not.
    out = [codec.decode(v) for k, v in read_topic(settings.kafka_bootstrap, settings.topic(topics.READINGS))
           if k == device_id.encode()]
    assert [(b.ts_ms, b.values[0].quality) for b in out if isinstance(b, ReadingBatch)] == [
        (late, Quality.LATE), (first, 0), (first, Quality.DUPLICATE), (second, 0),
        (older, Quality.OUT_OF_ORDER | Quality.LATE)]
    dead = [codec.decode_dead_letter(v) for _, v in read_topic(settings.kafka_bootstrap,
                                                               settings.topic(topics.READINGS_DLQ))]
    assert [d for d in dead if b'"soon"' in d["raw"]], "the undecodable record is dead-lettered"


def test_processor_killed_mid_stream_keeps_states_and_raises_no_false_alarm(runtime: dict, sim_control: str) -> None:
    api, settings, supervisor = runtime["api"], runtime["settings"], runtime["supervisor"]
    _all_online(runtime)
    device_id = _spare(runtime)[2]["device_id"]
    assert http("POST", f"{sim_control}/faults", {"device_id": device_id, "fault": "timeout"})[0] == 200
    try:
        _wait_status(api, device_id, "offline", TIMEOUT_MS / 1000 + 20)
        [old] = ray.get(supervisor.handles.remote("device-processor"))
        old_pid = ray.get(old.ping.remote())["pid"]
        kill_ms = int(time.time() * 1000)
        os.kill(old_pid, signal.SIGKILL)

        def caught_up() -> bool:
            try:
                [new] = ray.get(supervisor.handles.remote("device-processor"), timeout=5)
                ping = ray.get(new.ping.remote(), timeout=5)
            except (ray.exceptions.RayError, TimeoutError, ValueError):
                return False
            # The replacement has read past the kill by more than two timeouts: every sweep that could
            # misfire on a device it had not heard from yet has run.
            return ping["pid"] != old_pid and (ping["input_clock_ms"] or 0) > kill_ms + 2 * TIMEOUT_MS

        wait_for(caught_up, 120, "a replacement processor to catch up past the kill")
        states = {m["device_id"]: _health(api, m["device_id"])["status"] for m in runtime["manifest"]}
        assert states.pop(device_id) == "offline"  # remembered, not rediscovered
        assert set(states.values()) == {"online"}, states
        events = _events(settings)
        mine = {m["device_id"] for m in runtime["manifest"]}
        assert [e for e in events if e.device_id in mine and e.kind == "status" and e.ts_ms >= kill_ms] == []
        assert _moves(_events(settings, device_id), 0).count(("degraded", "offline")) == 1
    finally:
        http("DELETE", f"{sim_control}/faults")
    _wait_status(api, device_id, "online", 30)


def test_health_metrics_reach_rays_prometheus_endpoint(runtime: dict) -> None:
    settings = runtime["settings"]
    port = ray.nodes()[0]["MetricsExportPort"]
    # Counters live in the processor's process (a replaced one starts from zero): give this one a late
    # reading and a record it must dead-letter.
    device_id = "dq-health-2"
    sql(settings.pg_dsn, "INSERT INTO devices.devices (id, name, protocol, profile, unit_id)"
                         " VALUES ($1, $1, 'partner', 'sdm630', 1) ON CONFLICT DO NOTHING", device_id)
    late = ReadingBatch(device_id, int(time.time() * 1000) - 600_000, "partner-x", (Value(ENERGY, 5.0, "kWh", 0),))

    async def produce() -> None:
        raw = settings.topic(topics.READINGS_RAW)
        partition = topics.partition_for(device_id, settings.kafka_partitions)
        async with AsyncProducer(settings.kafka_bootstrap) as p:
            await p.send_many([(raw, partition, device_id.encode(), codec.encode(late)),
                               (raw, partition, device_id.encode(), b"not json")])

    asyncio.run(produce())

    wanted = ('ray_meterray_devices{', 'status="online"', 'ray_meterray_reading_quality_total{', 'flag="OK"',
              'flag="LATE"', 'ray_meterray_processing_lag_seconds{', 'ray_meterray_consumer_lag_messages{',
              'ray_meterray_dead_letters_total{')
    missing: list[str] = list(wanted)

    def scrape() -> str | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        missing[:] = [w for w in wanted if w not in text]
        return None if missing else text

    try:
        text = wait_for(scrape, 60, "meterray's health metrics on Ray's Prometheus endpoint", every_s=2)
    except pytest.fail.Exception:
        pytest.fail(f"not on Ray's Prometheus endpoint within 60 s: {missing}")
    online = [line for line in str(text).splitlines()
              if line.startswith("ray_meterray_devices{") and 'status="online"' in line]
    assert any(float(line.rsplit(" ", 1)[1]) >= 1 for line in online), online
