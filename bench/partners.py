"""`meterray bench partners`: one catch-up run of a partner's window through the real runtime, against a
raw baseline (bench/partners_baseline.py: aiohttp → Kafka), both fetching the same pages from the
partner simulator (its own process) in the same invocation.

The partner has `paths` retrieval paths (JSON, cursor pagination, `page_size` records a page), each
for its share of `devices` meters, every one asked for the last `window_s` seconds at 1 s steps
(energy and power: 2 records per meter and second). meterray's figures run from its first page to
its last (the actor's own counters, sampled every 0.1 s); CPU and RSS are those of meterray's
processes (Ray driver and workers: partner actor, device processor, writer, supervisor), as in
`meterray bench modbus`; the simulator's CPU is reported beside them.
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
from typing import Any

import asyncpg
import psutil

from bench.modbus import _cpu_and_rss, _cpu_s, _meterray_processes, _pss_mb, _ratio, _say, _write
from meterray.settings import REPO_ROOT, Settings
from storage.postgres.databases import recreate_database

SIM_PORT = 17100
BASELINE_TOPIC = "bench.partners.baseline"
PG_GRACE_S = 60.0


def _groups(devices: int, paths: int) -> list[list[str]]:
    ids = [f"m-{i:04d}" for i in range(1, devices + 1)]
    return [ids[i::paths] for i in range(paths)]


def _partner_doc(base: str, devices: int, paths: int, window_s: float, page_size: int) -> dict[str, Any]:
    mapping = {"device": "meter", "timestamp": "time", "quantity": "quantity", "value": "value", "unit": "unit",
               "quantity_map": {"energy": "1-0:1.8.0", "power": "1-0:16.7.0"}}
    return {"partner_id": "bench", "base_url": base, "auth": {"kind": "api_key", "key": "sim-key"},
            "rate": {"requests_per_minute": 60_000}, "timeout_s": 60,
            "devices": [{"external_id": m, "device_id": f"bench-{m}"} for g in _groups(devices, paths) for m in g],
            "paths": [{"name": f"p{i}", "url": "/api/json/cursor/readings", "records": "data",
                       "query": {"since": "{since_ms}", "until": "{until_ms}", "limit": str(page_size),
                                 "meters": ",".join(g)},
                       "pagination": {"kind": "cursor", "next_field": "next_cursor"}, "readings": mapping,
                       "interval_s": 86_400, "overlap_s": 0, "initial_lookback_s": window_s, "max_pages": 1_000_000}
                      for i, g in enumerate(_groups(devices, paths))]}


def run_baseline(settings: Settings, base: str, devices: int, paths: int, window_s: float, page_size: int,
                 sim: psutil.Process) -> dict[str, Any]:
    _say(f"baseline: {paths} aiohttp fetch loops → Kafka, {window_s:.0f} s of {devices} meters")
    sim0 = _cpu_s(sim)
    out = subprocess.run([sys.executable, "-m", "bench.partners_baseline", "--base", base, "--groups",
                          json.dumps(_groups(devices, paths)), "--window", str(window_s), "--page-size",
                          str(page_size), "--bootstrap", settings.kafka_bootstrap, "--topic",
                          settings.topic(BASELINE_TOPIC)], capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the baseline failed: {out.stderr.strip().splitlines()[-1:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {"pages": r["pages"], "records": r["records"], "seconds": r["seconds"],
            "pages_per_s": round(r["pages"] / r["seconds"], 1), "records_per_s": round(r["records"] / r["seconds"]),
            "cpu_s": r["cpu_s"], "cpu_s_per_1000_records": round(r["cpu_s"] / r["records"] * 1000, 4),
            "rss_mb": r["rss_mb"], "undelivered": r["undelivered"], "simulator_cpu_s": round(_cpu_s(sim) - sim0, 2),
            "note": "records produced as fetched, one Kafka message each; no mapping, cursor or PostgreSQL"}


def run_meterray(settings: Settings, base: str, devices: int, paths: int, window_s: float, page_size: int,
                 sim: psutil.Process) -> dict[str, Any]:
    import ray

    from meterray.app.runtime import init_ray, prepare_stores, start_ingestion, stop_ingestion
    from storage.postgres import partners as repo
    from storage.secrets import cipher

    prepare_stores(settings)
    init_ray(settings, dashboard=False)
    try:
        supervisor = start_ingestion(settings)
        try:
            async def save() -> None:
                conn = await asyncpg.connect(settings.pg_dsn)
                try:
                    await repo.save_partner(conn, _partner_doc(base, devices, paths, window_s, page_size),
                                            cipher(settings))
                finally:
                    await conn.close()

            asyncio.run(save())
            _say(f"meterray: partner stored ({paths} paths, {window_s:.0f} s of {devices} meters); waiting for its "
                 "actor's first page")
            deadline = time.monotonic() + 120
            handle, ping = None, {}
            while time.monotonic() < deadline:
                hs = ray.get(supervisor.handles.remote("partner"))
                if hs:
                    handle = hs[0]
                    ping = ray.get(handle.ping.remote())
                    if sum(p["pages"] for p in ping.get("paths", {}).values()) > 0:
                        break
                time.sleep(0.1)
            assert handle is not None, "no partner actor started"
            procs = _meterray_processes()
            cpu0, _ = _cpu_and_rss(procs)
            sim0 = _cpu_s(sim)
            t0 = time.perf_counter()
            pages0 = sum(p["pages"] for p in ping["paths"].values())
            records0 = sum(p["records"] for p in ping["paths"].values())
            while time.monotonic() < deadline + 600:
                ping = ray.get(handle.ping.remote())
                if all(p["runs"] >= 1 and p["watermark_ms"] and p["last_run_at"] and p["pages"] > 0
                       and p["watermark_ms"] > p["last_run_at"] * 1000 - 1000 for p in ping["paths"].values()):
                    break
                time.sleep(0.1)
            seconds = time.perf_counter() - t0
            sim_cpu = _cpu_s(sim) - sim0
            pages = sum(p["pages"] for p in ping["paths"].values())
            records = sum(p["records"] for p in ping["paths"].values())
            readings = sum(p["readings"] for p in ping["paths"].values())
            # CPU runs until the fetched readings are in PostgreSQL: every stage's share of the work.
            in_pg = _wait_for_pg(settings, readings)
            to_pg_s = time.perf_counter() - t0
            procs = _meterray_processes()
            cpu1, rss = _cpu_and_rss(procs)
            pss = _pss_mb(procs)
            by_process: dict[str, float] = {}
            for pid, (name, cpu, _mem) in cpu1.items():
                by_process[name] = by_process.get(name, 0.0) + cpu - cpu0.get(pid, (name, 0.0, 0.0))[1]
            cpu_s = sum(by_process.values())
        finally:
            stop_ingestion(supervisor)
    finally:
        ray.shutdown()
    measured_pages, measured_records = pages - pages0, records - records0
    return {"pages": pages, "records": records, "readings": readings, "readings_in_postgres": in_pg,
            "measured_pages": measured_pages, "measured_records": measured_records, "seconds": round(seconds, 2),
            "seconds_until_all_in_postgres": round(to_pg_s, 2),
            "pages_per_s": round(measured_pages / seconds, 1), "records_per_s": round(measured_records / seconds),
            "cpu_s": round(cpu_s, 2),
            # CPU from the first page until everything fetched is in PostgreSQL, per 1000 records of the run.
            "cpu_s_per_1000_records": round(cpu_s / records * 1000, 4) if records else None,
            "rss_mb": round(rss, 1), "pss_mb": round(pss, 1), "simulator_cpu_s": round(sim_cpu, 2),
            "client": ping.get("client", {}),
            "cpu_s_by_process": {k: round(v, 2) for k, v in sorted(by_process.items(), key=lambda kv: -kv[1])}}


def _wait_for_pg(settings: Settings, expected: int) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(settings.pg_dsn)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM monitoring.readings WHERE device_id LIKE 'bench-%'"))
        finally:
            await conn.close()

    deadline, still, last = time.monotonic() + PG_GRACE_S, time.monotonic(), -1
    while True:
        n = asyncio.run(count())
        now = time.monotonic()
        if n != last:
            still, last = now, n
        if n >= expected or now > deadline or now - still > 6.0:
            return n
        time.sleep(0.5)


def run_benchmark(settings: Settings, devices: int, paths: int, window_s: float, page_size: int) -> dict[str, Any]:
    from confluent_kafka.admin import AdminClient

    from simulators import partner_api
    from storage.kafka.topics import ALL_TOPICS

    run_id = uuid.uuid4().hex[:6]
    dsn = asyncio.run(recreate_database(settings.pg_dsn, "meterray_bench_partners"))
    settings = settings.model_copy(update={"pg_dsn": dsn, "kafka_topic_prefix": f"bench-{run_id}.",
                                           "ray_namespace": f"meterray-bench-{run_id}"})
    from confluent_kafka.admin import NewTopic

    from storage.kafka.topics import ensure_topics

    ensure_topics(settings)
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})  # kept: it must outlive the futures
    for fut in admin.create_topics([NewTopic(settings.topic(BASELINE_TOPIC),
                                             num_partitions=settings.kafka_partitions)]).values():
        fut.result(timeout=30)
    proc = partner_api.start(SIM_PORT, devices, 1.0, settings.var_dir / "log" / "partner-bench-sim.log")
    base = f"http://127.0.0.1:{SIM_PORT}"
    sim = psutil.Process(proc.pid)
    try:
        baseline = run_baseline(settings, base, devices, paths, window_s, page_size, sim)
        meterray = run_meterray(settings, base, devices, paths, window_s, page_size, sim)
        sim_rss = sim.memory_info().rss / 2**20
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
        for fut in admin.delete_topics([settings.topic(t) for t in (*ALL_TOPICS, BASELINE_TOPIC)]).values():
            try:
                fut.result(timeout=30)
            except Exception as err:  # already gone: not worth failing a benchmark for
                _say(f"topic not deleted: {err}")
    result = {"scenario": "partners", "devices": devices, "paths": paths, "window_s": window_s,
              "page_size": page_size, "format": "json", "pagination": "cursor",
              "meterray": meterray, "baseline": baseline,
              "cpu_ratio_meterray_to_baseline": _ratio(meterray["cpu_s_per_1000_records"],
                                                       baseline["cpu_s_per_1000_records"]),
              "simulator": {"rss_mb": round(sim_rss, 1)},
              "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count()}
    _write("partners.json", result)
    return result
