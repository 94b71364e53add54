"""`meterray bench mqtt`: N devices publishing meterray's own message at QoS 1, R messages/s in total,
through the real runtime into PostgreSQL, against a raw baseline (paho subscriber → Kafka), same run.

Load: the gateway simulator (simulators/mqtt_gateway.py), in as many processes as the rate needs
(about 5,000 messages/s each), each publishing its slice of the devices: one message per reading,
`{"ts": <publish time, epoch ms>, "values": {energy, power, voltage}}` on
`<run prefix>/meterray/v1/<device>/readings`. A message counts as offered once the broker
acknowledged it (PUBACK). Both sides get the same load, one after the other, on their own topics.

Measured for each side, from the first publish until everything published has reached its sink
(PostgreSQL for meterray; a confirmed Kafka record for the baseline):
- achieved messages/s and data points/s = what reached the sink ÷ that time; `lost` = acknowledged
  by the broker but not in the sink (for meterray: counted in PostgreSQL, as data points ÷ 3);
- p50/p99 delay: meterray, publish → queryable, sampled by polling `readings_current` of 200
  devices every 100 ms (so the figures carry up to ~100 ms of sampling error plus the query time);
  baseline, publish → Kafka confirmed (it has no later stage);
- CPU seconds per 1000 data points and RSS of meterray's processes (Ray driver and workers, as
  bench/modbus.py counts them) or of the baseline process; the load generators' CPU is reported
  beside them (`loadgen_cpu_s`), since on this machine they compete for the same cores.

Mosquitto keeps at most `max_queued_messages` (1000 by default; scripts/services.sh configures a
million) unacknowledged messages per subscriber beyond the in-flight window and drops the rest
silently (mosquitto.conf(5)): a side that falls behind loses messages there. `lost` counts every
loss; `lost_at_broker` is the part the broker dropped (its `$SYS/broker/publish/messages/dropped`
counter over the side's run; broker-wide, so on a shared broker other clients' drops count too) and
`lost_in_pipeline` the rest. The broker is `METERRAY_MQTT_HOST`/`METERRAY_MQTT_PORT`.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from bench.modbus import RESULTS, _cpu_and_rss, _meterray_processes, _pss_mb, _say, raise_open_files_limit
from meterray.mqtt_config import MqttConnection
from meterray.settings import REPO_ROOT, Settings
from storage.postgres.databases import recreate_database

BASELINE_TOPIC = "bench.mqtt-baseline"
LOADGEN_RATE = 5000.0  # messages/s one load generator process offers comfortably here
SAMPLED_DEVICES = 200
DRAIN_STILL_S = 10.0  # the sink is drained when its count has not moved for this long
DATAPOINTS_PER_MESSAGE = 3
DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"  # mosquitto(8): dropped for inflight/queue limits
SYS_INTERVAL_S = 10.0  # mosquitto.conf(5) sys_interval default: how stale the $SYS counters may be


class BrokerDrops:
    """Mosquitto's count of messages it dropped for its in-flight/queue limits, watched over one side's run.

    The broker publishes `$SYS/broker/publish/messages/dropped` every `sys_interval` when it changed, as a
    retained message that expires after 60 s (mosquitto 2.0): so a subscription kept for the whole run
    sees every change, and gets the current total at once only if it changed in the last minute. No
    value at all means no drop during the run; a value without a starting total means unknown (None).
    """

    def __init__(self, settings: Settings) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.values: list[int] = []
        self._subscribed = threading.Event()
        self._client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                   client_id=f"bench-sys-{uuid.uuid4().hex[:8]}")
        self._client.on_message = self._message
        self._client.on_connect = lambda client, *_: client.subscribe(DROPPED_TOPIC, qos=0)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._settings = settings
        self.base: int | None = None

    def _message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            self.values.append(int(msg.payload))
        except ValueError:
            pass

    def start(self) -> BrokerDrops:
        try:
            self._client.connect(self._settings.mqtt_host, self._settings.mqtt_port, keepalive=30)
        except OSError:
            return self
        self._client.loop_start()
        self._subscribed.wait(10)
        time.sleep(1.0)  # a retained total, if there is one, comes right after the SUBACK
        self.base = self.values[-1] if self.values else None
        self.values.clear()
        return self

    def dropped(self, lossy: bool) -> int | None:
        """Messages dropped since `start` (after one more sys_interval when the side lost any)."""
        if lossy:
            time.sleep(SYS_INTERVAL_S + 1)
        self._client.disconnect()
        self._client.loop_stop()
        if not self._subscribed.is_set():
            return None
        if not self.values:
            return 0
        return None if self.base is None else max(0, self.values[-1] - self.base)


def _split_losses(result: dict[str, Any], drops: BrokerDrops) -> None:
    """Add lost_at_broker / lost_in_pipeline to a side's result (None when the broker does not say)."""
    lost = result["lost"]
    dropped = drops.dropped(lossy=lost > 0)
    result["lost_at_broker"] = None if dropped is None else min(lost, dropped)
    result["lost_in_pipeline"] = None if dropped is None else lost - min(lost, dropped)


def _loadgens(settings: Settings, prefix: str, device_prefix: str, devices: int, rate: float, seconds: float,
              workdir: Path) -> list[subprocess.Popen[str]]:
    n = max(1, math.ceil(rate / LOADGEN_RATE))
    per = -(-devices // n)
    procs = []
    for i in range(n):
        first, count = i * per, min(per, devices - i * per)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "simulators.mqtt_gateway", "--host", settings.mqtt_host,
             "--port", str(settings.mqtt_port), "--prefix", prefix, "--device-prefix", device_prefix,
             "--meters", str(count), "--first", str(first), "--rate", str(rate / n), "--seconds", str(seconds),
             "--client-id", f"{prefix}-loadgen-{i}", "--ack-timeout", "120"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT))
    return procs


def _finish_loadgens(procs: list[subprocess.Popen[str]]) -> dict[str, Any]:
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        if p.returncode not in (0, 1) or not out.strip():
            raise RuntimeError(f"a load generator failed: {err.strip().splitlines()[-1:] or 'no output'}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    cpu = sum(r["cpu_s"] for r in results)
    first = min(r["first_ms"] for r in results)
    last = max(r["last_ms"] for r in results)
    published = sum(r["published"] for r in results)
    return {"published": published, "datapoints": sum(r["datapoints"] for r in results),
            "unacknowledged": sum(r["unacknowledged"] for r in results), "first_ms": first, "last_ms": last,
            "offered_messages_per_s": round(published / max(1e-3, (last - first) / 1000), 1),
            "processes": len(results), "cpu_s": round(cpu, 2)}


def _proc_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _side(load: dict[str, Any], delivered: int, last_ms: float, cpu_s: float, rss_mb: float,
          p50: float | None, p99: float | None, messages: int) -> dict[str, Any]:
    span_s = max(1e-3, (last_ms - load["first_ms"]) / 1000)
    return {
        "offered_messages_per_s": load["offered_messages_per_s"],
        "achieved_messages_per_s": round(messages / span_s, 1),
        "datapoints_per_s": round(messages * DATAPOINTS_PER_MESSAGE / span_s, 1),
        "lost": load["published"] - messages,
        "p50_ms": p50,
        "p99_ms": p99,
        "cpu_s_per_1000_datapoints": round(cpu_s / (messages * DATAPOINTS_PER_MESSAGE) * 1000, 4) if messages else None,
        "rss_mb": round(rss_mb, 1),
        "published_messages": load["published"],
        "delivered_messages": messages,
        "datapoints_in_sink": delivered,
        "first_publish_to_drained_s": round(span_s, 2),
        "cpu_s": round(cpu_s, 2),
        "loadgen": {"processes": load["processes"], "cpu_s": load["cpu_s"]},
    }


# --- baseline -------------------------------------------------------------------------------------

def run_baseline(settings: Settings, run_id: str, devices: int, rate: float, seconds: float) -> dict[str, Any]:
    work = settings.var_dir / "bench" / f"mqtt-{run_id}"
    work.mkdir(parents=True, exist_ok=True)
    prefix, ready, status = f"bench-{run_id}-b", work / "baseline.ready", work / "baseline.status"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.mqtt_baseline", "--host", settings.mqtt_host, "--port", str(settings.mqtt_port),
         "--topic-filter", f"{prefix}/meterray/v1/+/readings", "--client-id", f"{prefix}-baseline",
         "--bootstrap", settings.kafka_bootstrap, "--topic", settings.topic(BASELINE_TOPIC),
         "--partitions", str(settings.kafka_partitions), "--ready-file", str(ready), "--status-file", str(status)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        _wait_file(ready, proc, "the baseline subscriber")
        drops = BrokerDrops(settings).start()
        cpu0 = _proc_cpu([proc.pid])
        _say(f"baseline: {devices} devices, {rate:.0f} messages/s for {seconds:.0f} s → plain paho subscriber → Kafka")
        load = _finish_loadgens(_loadgens(settings, prefix, f"b{run_id}-", devices, rate, seconds, work))
        delivered, drained_ms = _wait_count(lambda: int(status.read_text() or 0) if status.exists() else 0,
                                            load["published"])
        cpu1 = _proc_cpu([proc.pid])
        rss = psutil.Process(proc.pid).memory_info().rss / 2**20
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    r = json.loads(out.strip().splitlines()[-1])
    if r["delivery_errors"]:
        _say(f"baseline: {r['delivery_errors']} Kafka errors ({r['last_error']})")
    result = _side(load, r["delivered"] * DATAPOINTS_PER_MESSAGE, drained_ms, cpu1 - cpu0, rss,
                   r["p50_ms"], r["p99_ms"], r["delivered"])
    result["note"] = ("no PostgreSQL stage: payloads straight to Kafka; delays are publish → Kafka confirmed, "
                      "and data points are counted as 3 per delivered message")
    _split_losses(result, drops)
    return result


# --- meterray -------------------------------------------------------------------------------------

class Sampler:
    """Polls readings_current of some devices; the first time a (device, ts) shows, its delay is now − ts."""

    def __init__(self, dsn: str, device_ids: list[str]) -> None:
        self._dsn, self._ids = dsn, device_ids
        self._stop = threading.Event()
        self.delays: list[float] = []
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    async def _run(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        seen: dict[str, int] = {}
        try:
            while not self._stop.is_set():
                rows = await conn.fetch("SELECT device_id, (extract(epoch FROM ts) * 1000)::bigint AS ms"
                                        " FROM monitoring.readings_current WHERE device_id = ANY($1::text[])"
                                        " AND quantity = '1-0:1.8.0'", self._ids)
                now = time.time() * 1000
                for r in rows:
                    if seen.get(r["device_id"]) != r["ms"]:
                        if r["device_id"] in seen:  # the first value seen may be older than the window
                            self.delays.append(now - r["ms"])
                        seen[r["device_id"]] = r["ms"]
                await asyncio.sleep(0.1)
        finally:
            await conn.close()

    def quantiles(self) -> tuple[float | None, float | None]:
        d = sorted(self.delays)
        if not d:
            return None, None
        return round(d[len(d) // 2], 1), round(d[min(len(d) - 1, int(0.99 * len(d)))], 1)


def run_meterray(settings: Settings, run_id: str, devices: int, rate: float, seconds: float,
                 subscribers: int) -> dict[str, Any]:
    import ray

    from meterray.app.runtime import init_ray, start_ingestion, stop_ingestion
    from storage.postgres.mqtt import register_mqtt_devices, save_mqtt_connections

    prefix, device_prefix = f"bench-{run_id}-m", f"m{run_id}-"
    ids = [f"{device_prefix}{i:06d}" for i in range(devices)]
    conn = MqttConnection(f"bench-{run_id}", settings.mqtt_host, settings.mqtt_port,
                          f"{prefix}/meterray/v1/+/readings", subscribers=subscribers, auto_register=True,
                          session_expiry_s=600)

    async def setup() -> None:
        c = await asyncpg.connect(settings.pg_dsn)
        try:
            await register_mqtt_devices(c, ids)
            await save_mqtt_connections(c, [conn])
        finally:
            await c.close()

    asyncio.run(setup())
    init_ray(settings, dashboard=False)
    try:
        supervisor = start_ingestion(settings)
        try:
            _wait_subscribed(supervisor, subscribers)
            procs = _meterray_processes()
            cpu0, _ = _cpu_and_rss(procs)
            sampler = Sampler(settings.pg_dsn, ids[:: max(1, devices // SAMPLED_DEVICES)][:SAMPLED_DEVICES])
            sampler.start()
            drops = BrokerDrops(settings).start()
            _say(f"meterray: {devices} devices, {rate:.0f} messages/s for {seconds:.0f} s, {subscribers} MQTT shards")
            load = _finish_loadgens(_loadgens(settings, prefix, device_prefix, devices, rate, seconds,
                                              settings.var_dir / "bench"))
            in_pg, drained_ms = _wait_count(lambda: _count(settings.pg_dsn),
                                            load["published"] * DATAPOINTS_PER_MESSAGE)
            sampler.stop()
            procs = _meterray_processes()
            cpu1, rss = _cpu_and_rss(procs)
            pss = _pss_mb(procs)
            shards = ray.get([h.ping.remote() for h in ray.get(supervisor.handles.remote("mqtt-shard"))])
        finally:
            stop_ingestion(supervisor)
    finally:
        ray.shutdown()
    by_process: dict[str, float] = {}
    for pid, (name, cpu, _mem) in cpu1.items():
        by_process[name] = by_process.get(name, 0.0) + cpu - cpu0.get(pid, (name, 0.0, 0.0))[1]
    p50, p99 = sampler.quantiles()
    result = _side(load, in_pg, drained_ms, sum(by_process.values()), rss, p50, p99,
                   in_pg // DATAPOINTS_PER_MESSAGE)
    result.update(pss_mb=round(pss, 1), delay_samples=len(sampler.delays),
                  cpu_s_by_process={k: round(v, 2) for k, v in sorted(by_process.items(), key=lambda kv: -kv[1])},
                  shards=[{k: s[k] for k in ("name", "messages", "redelivered", "acked", "dead_letters",
                                             "delivery_failures", "p50_ms", "p99_ms")} for s in shards],
                  note="delays are publish → queryable in PostgreSQL (readings_current sampled every 100 ms); "
                       "shard p50/p99 are MQTT receive → Kafka confirmed")
    _split_losses(result, drops)
    return result


def _count(dsn: str) -> int:
    async def run() -> int:
        c = await asyncpg.connect(dsn)
        try:
            return int(await c.fetchval("SELECT count(*) FROM monitoring.readings"))
        finally:
            await c.close()

    return asyncio.run(run())


def _wait_subscribed(supervisor: Any, subscribers: int, timeout_s: float = 120) -> None:
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pings = ray.get([h.ping.remote() for h in ray.get(supervisor.handles.remote("mqtt-shard"))])
        if len(pings) == subscribers and all(p["subscribed"] for p in pings):
            return
        time.sleep(0.5)
    raise RuntimeError("the MQTT shards did not subscribe within 2 minutes")


def _wait_count(count: Any, expected: int) -> tuple[int, float]:
    """(count, wall-clock ms when it last grew) once it reaches `expected` or stops moving."""
    last, grew_ms, still_since = -1, time.time() * 1000, time.monotonic()
    while True:
        n = count()
        if n != last:
            last, grew_ms, still_since = n, time.time() * 1000, time.monotonic()
        if n >= expected or time.monotonic() - still_since >= DRAIN_STILL_S:
            return n, grew_ms
        time.sleep(0.25)


def _wait_file(path: Path, proc: subprocess.Popen[str], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.1)


# --- the run --------------------------------------------------------------------------------------

def run_benchmark(settings: Settings, devices: int, rate: float, seconds: float,
                  subscribers: int = 2) -> dict[str, Any]:
    from confluent_kafka.admin import AdminClient, NewTopic

    from meterray.app.runtime import prepare_stores
    from storage.kafka.topics import ALL_TOPICS

    raise_open_files_limit()
    load_start = [round(x, 2) for x in os.getloadavg()]
    run_id = uuid.uuid4().hex[:6]
    dsn = asyncio.run(recreate_database(settings.pg_dsn, "meterray_bench_mqtt"))
    settings = settings.model_copy(update={"pg_dsn": dsn, "kafka_topic_prefix": f"bench-{run_id}.",
                                           "ray_namespace": f"meterray-bench-{run_id}"})
    (settings.var_dir / "bench").mkdir(parents=True, exist_ok=True)
    prepare_stores(settings)
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for fut in admin.create_topics([NewTopic(settings.topic(BASELINE_TOPIC),
                                             num_partitions=settings.kafka_partitions)]).values():
        fut.result(timeout=30)
    try:
        baseline = run_baseline(settings, run_id, devices, rate, seconds)
        meterray = run_meterray(settings, run_id, devices, rate, seconds, subscribers)
    finally:
        for topic, fut in admin.delete_topics([settings.topic(t) for t in (*ALL_TOPICS, BASELINE_TOPIC)]).items():
            try:
                fut.result(timeout=30)
            except Exception as err:
                _say(f"topic {topic} not deleted: {err}")
    ratio = (round(meterray["achieved_messages_per_s"] / baseline["achieved_messages_per_s"], 2)
             if baseline["achieved_messages_per_s"] else None)
    result = {"scenario": "mqtt", "devices": devices, "rate": rate, "seconds": seconds, "subscribers": subscribers,
              "broker": f"{settings.mqtt_host}:{settings.mqtt_port}",
              "load_average_start": load_start, "load_average_end": [round(x, 2) for x in os.getloadavg()],
              "meterray": meterray, "baseline": baseline, "rate_ratio_meterray_to_baseline": ratio,
              "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mqtt.json").write_text(json.dumps(result, indent=2) + "\n")
    _say(f"written {RESULTS / 'mqtt.json'}")
    return result
