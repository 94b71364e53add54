"""`meterray bench modbus`: N simulated meters polled through the real runtime, against a raw baseline.

Both runs poll the same simulator (its own process) in the same invocation. meterray's CPU and
memory are those of its own processes — the Ray driver and every Ray worker/actor process — not
the simulator's, PostgreSQL's, Kafka's, nor Ray's system daemons (raylet, GCS).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from meterray.settings import REPO_ROOT, Settings
from storage.postgres.databases import recreate_database
from storage.postgres.readings import count_readings

RESULTS = REPO_ROOT / "bench" / "results"
SIM_BASE_PORT = 17020
WARMUP_S = 10.0
RAY_DAEMONS = {"DashboardAgent", "RuntimeEnvAgent"}  # Ray's per-node agents, not meterray's work


def _say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _meterray_processes() -> list[psutil.Process]:
    """The driver and every Ray worker process it started (actors included); not raylet or GCS."""
    me = psutil.Process()
    found = [me]
    for p in me.children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if cmd.startswith("ray::") and cmd.split()[0].removeprefix("ray::") in RAY_DAEMONS:
            continue
        if cmd.startswith("ray::") or "default_worker.py" in cmd:
            found.append(p)
    return found


def _cpu_and_rss(procs: list[psutil.Process]) -> tuple[dict[int, tuple[str, float]], float]:
    """CPU seconds so far by pid (with a short process name), and the summed RSS in MiB."""
    cpu, rss = {}, 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            name = p.cmdline()[0] if p.pid != os.getpid() else "driver"
            cpu[p.pid] = (name.removeprefix("ray::") if name.startswith("ray::") else
                          "idle worker" if "default_worker" in " ".join(p.cmdline()) else name, t.user + t.system)
            rss += p.memory_info().rss
        except (psutil.Error, IndexError):
            pass
    return cpu, rss / 2**20


async def _count_readings(dsn: str, start_ms: int, end_ms: int) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await count_readings(conn, datetime.fromtimestamp(start_ms / 1000, timezone.utc),
                                    datetime.fromtimestamp(end_ms / 1000, timezone.utc))
    finally:
        await conn.close()


def _summary(meters: int, interval_s: float, seconds: float, polls_ok: int, readings: int, cpu_s: float,
             rss_mb: float, p50: float | None, p99: float | None, in_pg: int) -> dict[str, Any]:
    return {
        "target_polls_per_s": round(meters / interval_s, 1),
        "achieved_polls_per_s": round(polls_ok / seconds, 1),
        "p50_ms": p50,
        "p99_ms": p99,
        "readings_in_postgres": in_pg,
        "cpu_s_per_1000_readings": round(cpu_s / readings * 1000, 4) if readings else None,
        "rss_mb": round(rss_mb, 1),
        "readings": readings,
        "cpu_s": round(cpu_s, 2),
    }


def run_baseline(settings: Settings, manifest: Path, meters: int, interval_s: float, seconds: float) -> dict:
    _say(f"baseline: plain pymodbus loop → Kafka for {seconds:.0f} s (after {WARMUP_S:.0f} s warm-up)")
    out = subprocess.run(
        [sys.executable, "-m", "bench.modbus_baseline", "--manifest", str(manifest), "--interval", str(interval_s),
         "--seconds", str(seconds), "--warmup", str(WARMUP_S), "--bootstrap", settings.kafka_bootstrap,
         "--topic", settings.topic("bench.baseline")],
        check=True, capture_output=True, text=True, cwd=REPO_ROOT,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if r["delivery_errors"] or r["polls_failed"]:
        _say(f"baseline: {r['polls_failed']} failed polls, {r['delivery_errors']} Kafka errors ({r['last_error']})")
    result = _summary(meters, interval_s, seconds, r["polls_ok"], r["readings"], r["cpu_s"], r["rss_mb"],
                      r["p50_ms"], r["p99_ms"], 0)
    result["note"] = "no PostgreSQL stage: raw register words straight to Kafka, so readings_in_postgres is 0"
    return result


def run_meterray(settings: Settings, manifest: Path, meters: int, interval_s: float, seconds: float) -> dict:
    import ray

    from meterray.app.demo import register_manifest
    from meterray.app.runtime import init_ray, prepare_stores, start_ingestion, stop_ingestion

    prepare_stores(settings)
    register_manifest(settings, manifest, interval_s, min(1.0, interval_s * 0.8))
    init_ray(settings, dashboard=False)
    supervisor = start_ingestion(settings)
    try:
        _say(f"meterray: warming up {WARMUP_S:.0f} s")
        time.sleep(WARMUP_S)
        shards = [h for h in _shard_handles(supervisor)]
        ray.get([s.reset_stats.remote() for s in shards])
        procs = _meterray_processes()
        cpu0, _ = _cpu_and_rss(procs)
        t0 = int(time.time() * 1000)
        _say(f"meterray: measuring {seconds:.0f} s over {len(procs)} processes")
        time.sleep(seconds)
        t1 = int(time.time() * 1000)
        procs = _meterray_processes()
        cpu1, rss = _cpu_and_rss(procs)
        by_process: dict[str, float] = {}
        for pid, (name, cpu) in cpu1.items():
            by_process[name] = by_process.get(name, 0.0) + cpu - cpu0.get(pid, (name, 0.0))[1]
        cpu_s = sum(by_process.values())
        stats = ray.get([s.ping.remote() for s in shards])
        polls_ok = sum(s["polls_ok"] for s in stats)
        readings = sum(s["readings"] for s in stats)
        p50 = max((s["p50_ms"] or 0) for s in stats) if stats else None
        p99 = max((s["p99_ms"] or 0) for s in stats) if stats else None
        in_pg = _wait_for_pg(settings, t0, t1, readings)
    finally:
        stop_ingestion(supervisor)
        ray.shutdown()
    result = _summary(meters, interval_s, seconds, polls_ok, readings, cpu_s, rss, p50, p99, in_pg)
    result["cpu_s_by_process"] = {k: round(v, 2) for k, v in sorted(by_process.items(), key=lambda kv: -kv[1])}
    return result


def _shard_handles(supervisor: Any) -> list[Any]:
    import ray

    return ray.get(supervisor.handles.remote("modbus-shard"))


def _wait_for_pg(settings: Settings, t0: int, t1: int, expected: int) -> int:
    """Readings of the measured window that reached PostgreSQL, once the writers have caught up."""
    deadline, last = time.monotonic() + 60, -1
    while time.monotonic() < deadline:
        n = asyncio.run(_count_readings(settings.pg_dsn, t0, t1))
        if n >= expected or n == last:
            return n
        last = n
        time.sleep(3)
    return last


def run_benchmark(settings: Settings, meters: int, interval_s: float, seconds: float, units_per_port: int) -> dict:
    from meterray.app.demo import start_simulator

    run_id = uuid.uuid4().hex[:6]
    dsn = asyncio.run(recreate_database(settings.pg_dsn, "meterray_bench"))
    settings = settings.model_copy(update={"pg_dsn": dsn, "kafka_topic_prefix": f"bench-{run_id}.",
                                           "ray_namespace": f"meterray-bench-{run_id}"})
    (settings.var_dir / "log").mkdir(parents=True, exist_ok=True)
    manifest = settings.var_dir / "bench" / "manifest.json"
    _say(f"simulator: {meters} meters, {units_per_port} per TCP port")
    sim = start_simulator(settings, meters, units_per_port, SIM_BASE_PORT, manifest)
    try:
        from storage.kafka.topics import ensure_topics

        ensure_topics(settings)
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
        created = admin.create_topics(
            [NewTopic(settings.topic("bench.baseline"), num_partitions=settings.kafka_partitions)])
        for fut in created.values():
            fut.result(timeout=30)
        baseline = run_baseline(settings, manifest, meters, interval_s, seconds)
        meterray = run_meterray(settings, manifest, meters, interval_s, seconds)
    finally:
        os.killpg(sim.pid, signal.SIGTERM)
        sim.wait(timeout=10)
    result = {"scenario": "modbus", "meters": meters, "interval_s": interval_s, "seconds": seconds,
              "meterray": meterray, "baseline": baseline,
              "cpu_ratio_meterray_to_baseline": (
                  round(meterray["cpu_s_per_1000_readings"] / baseline["cpu_s_per_1000_readings"], 2)
                  if meterray["cpu_s_per_1000_readings"] and baseline["cpu_s_per_1000_readings"] else None),
              "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "cpus": os.cpu_count()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "modbus.json").write_text(json.dumps(result, indent=2) + "\n")
    _say(f"written {RESULTS / 'modbus.json'}")
    return result
