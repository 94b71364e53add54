"""`meterray bench modbus`: N simulated meters polled through the real runtime, against a raw baseline.

Both runs poll the same simulator (its own process) in the same invocation. meterray's CPU and
memory are those of its own processes — the Ray driver and every Ray worker/actor process — not
the simulator's, PostgreSQL's, Kafka's, nor Ray's system daemons (raylet, GCS). The simulator's
CPU over each measured window is reported beside them (`simulator_cpu_s`), since on a small
machine it competes for the same cores.

`--find-knee` searches, for each of the two, the largest meter count that holds its target
(see bench/knee.py for the search); every probe is a short plain run on a prefix of one simulator
sized for the largest probe.
"""
from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from bench.knee import HOLD_FRACTION, KneePlan, bounds, held, next_probe
from meterray.settings import REPO_ROOT, Settings
from storage.postgres.databases import drop_database, recreate_database
from storage.postgres.readings import count_readings

RESULTS = REPO_ROOT / "bench" / "results"
# The simulator's first port; METERRAY_BENCH_SIM_PORT moves it (two benches on one machine need two ranges).
SIM_BASE_PORT = int(os.environ.get("METERRAY_BENCH_SIM_PORT", "17020"))
WARMUP_S = 10.0
PG_GRACE_S = 60.0  # plain run: how long the writers may take to catch up after the window
KNEE_PG_GRACE_S = 15.0  # knee probe: readings of the window must be in PostgreSQL this soon after it
RAY_DAEMONS = {"DashboardAgent", "RuntimeEnvAgent"}  # Ray's per-node agents, not meterray's work
BASELINE_TOPIC = "bench.baseline"


def _say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def raise_open_files_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE → hard, so 2,000 TCP connections (and the children that inherit it) fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)  # Linux caps it at fs.nr_open
    if soft != resource.RLIM_INFINITY and soft < new:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            return soft, new
        except (ValueError, OSError):
            pass
    return soft, soft


def _meterray_processes() -> list[psutil.Process]:
    """The driver and every Ray worker process it started (actors included), and Serve's HAProxy; not raylet
    or GCS."""
    me = psutil.Process()
    found = [me]
    for p in me.children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if cmd.startswith("ray::") and cmd.split()[0].removeprefix("ray::") in RAY_DAEMONS:
            continue
        if cmd.startswith("ray::") or "default_worker.py" in cmd or cmd.split(" ", 1)[0].endswith("/haproxy"):
            found.append(p)  # HAProxy: Serve's HTTP ingress when METERRAY_API_INGRESS=haproxy
    return found


def process_name(cmdline: list[str]) -> str:
    """A Ray worker's short name: its actor class. Ray titles a busy actor's process
    `ray::<Class>.<method>` (`ray::ModbusShard.ping`) and an idle one `ray::<Class>`, so the name is cut
    at the first dot: one name per actor whatever it was doing when sampled."""
    name = cmdline[0]
    if name.endswith("/haproxy"):
        return "haproxy"
    if name.startswith("ray::"):
        return name.removeprefix("ray::").split(".", 1)[0]
    return "idle worker" if "default_worker" in " ".join(cmdline) else name


def _cpu_and_rss(procs: list[psutil.Process]) -> tuple[dict[int, tuple[str, float, float]], float]:
    """(name, CPU seconds so far, RSS MiB) by pid (with a short process name), and the summed RSS in MiB."""
    out, rss = {}, 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            name = process_name(p.cmdline()) if p.pid != os.getpid() else "driver"
            mem = p.memory_info().rss / 2**20
            out[p.pid] = (name, t.user + t.system, mem)
            rss += mem
        except (psutil.Error, IndexError):
            pass
    return out, rss


def _pss_mb(procs: list[psutil.Process]) -> float:
    """Summed proportional set size: shared pages (Ray's libraries) counted once, not once per process."""
    total = 0.0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.Error, AttributeError):
            pass
    return total / 2**20


def _worker_niceness(procs: list[psutil.Process]) -> int | None:
    """The niceness of the Ray worker processes (the actors), not the driver's."""
    values = set()
    for p in procs:
        if p.pid != os.getpid():
            try:
                values.add(p.nice())
            except psutil.Error:
                pass
    return max(values) if values else None


def _cpu_s(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
        return t.user + t.system + t.children_user + t.children_system
    except psutil.Error:
        return 0.0


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


@dataclass(frozen=True, slots=True)
class Window:
    """What one probe measures: meters, interval, warm-up and measured seconds."""

    meters: int
    interval_s: float
    seconds: float
    warmup_s: float


def run_baseline(settings: Settings, manifest: Path, w: Window, sim: psutil.Process) -> dict[str, Any]:
    _say(f"baseline: {w.meters} meters, plain pymodbus loop → Kafka for {w.seconds:.0f} s "
         f"(after {w.warmup_s:.0f} s warm-up)")
    # stderr goes to a file, not a pipe: on a busy machine pymodbus logs every late answer it drops, and
    # a pipe nobody reads until the end fills up (64 KiB) and blocks the baseline in the middle of its run.
    err_file = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.modbus_baseline", "--manifest", str(manifest), "--interval", str(w.interval_s),
         "--seconds", str(w.seconds), "--warmup", str(w.warmup_s), "--bootstrap", settings.kafka_bootstrap,
         "--topic", settings.topic(BASELINE_TOPIC)],
        stdout=subprocess.PIPE, stderr=err_file, text=True, cwd=REPO_ROOT,
    )
    assert proc.stdout is not None
    sim_cpu0 = sim_cpu1 = 0.0
    last = ""
    for line in proc.stdout:  # one event line when the measured window opens, one when it closes, then the result
        last = line.strip()
        if last == '{"event": "measure"}':
            sim_cpu0 = _cpu_s(sim)
        elif last == '{"event": "measured"}':
            sim_cpu1 = _cpu_s(sim)
    returncode = proc.wait()
    err_file.seek(0)
    err = err_file.read()
    err_file.close()
    if returncode != 0:
        raise RuntimeError(f"the baseline failed: {err.strip().splitlines()[-1:] or 'no output'}")
    r = json.loads(last)
    if r["delivery_errors"] or r["polls_failed"]:
        _say(f"baseline: {r['polls_failed']} failed polls, {r['delivery_errors']} Kafka errors ({r['last_error']})")
    result = _summary(w.meters, w.interval_s, w.seconds, r["polls_ok"], r["readings"], r["cpu_s"], r["rss_mb"],
                      r["p50_ms"], r["p99_ms"], 0)
    result.update(polls_failed=r["polls_failed"], simulator_cpu_s=round(sim_cpu1 - sim_cpu0, 2),
                  note="no PostgreSQL stage: raw register words straight to Kafka, so readings_in_postgres is 0")
    return result


def run_meterray(settings: Settings, manifest: Path, w: Window, sim: psutil.Process,
                 pg_grace_s: float = PG_GRACE_S) -> dict[str, Any]:
    import ray

    from meterray.app.demo import register_manifest
    from meterray.app.runtime import init_ray, prepare_stores, start_ingestion, stop_ingestion

    prepare_stores(settings)
    register_manifest(settings, manifest, w.interval_s, min(1.0, w.interval_s * 0.8))
    init_ray(settings, dashboard=False)
    try:
        supervisor = start_ingestion(settings)
        try:
            _say(f"meterray: {w.meters} meters, warming up {w.warmup_s:.0f} s")
            time.sleep(w.warmup_s)
            shards = _shard_handles(supervisor)
            ray.get([s.reset_stats.remote() for s in shards])
            stages0 = _stage_counts(supervisor)
            procs = _meterray_processes()
            cpu0, _ = _cpu_and_rss(procs)
            sim_cpu0 = _cpu_s(sim)
            t0 = int(time.time() * 1000)
            _say(f"meterray: measuring {w.seconds:.0f} s over {len(procs)} processes")
            time.sleep(w.seconds)
            t1 = int(time.time() * 1000)
            sim_cpu = _cpu_s(sim) - sim_cpu0
            procs = _meterray_processes()
            cpu1, rss = _cpu_and_rss(procs)
            pss = _pss_mb(procs)
            nice = _worker_niceness(procs)
            stats = ray.get([s.ping.remote() for s in shards])
            stages1 = _stage_counts(supervisor)
            by_process: dict[str, float] = {}
            rss_by_process: dict[str, float] = {}
            for pid, (name, cpu, mem) in cpu1.items():
                by_process[name] = by_process.get(name, 0.0) + cpu - cpu0.get(pid, (name, 0.0, 0.0))[1]
                rss_by_process[name] = rss_by_process.get(name, 0.0) + mem
            cpu_s = sum(by_process.values())
            polls_ok = sum(s["polls_ok"] for s in stats)
            readings = sum(s["readings"] for s in stats)
            p50 = max((s["p50_ms"] or 0) for s in stats) if stats else None
            p99 = max((s["p99_ms"] or 0) for s in stats) if stats else None
            in_pg = _wait_for_pg(settings, t0, t1, readings, pg_grace_s)
        finally:
            stop_ingestion(supervisor)
    finally:
        ray.shutdown()
    result = _summary(w.meters, w.interval_s, w.seconds, polls_ok, readings, cpu_s, rss, p50, p99, in_pg)
    result["polls_failed"] = sum(s["polls_failed"] for s in stats)
    result["overruns"] = sum(s["overruns"] for s in stats)  # slots a shard skipped: its event loop ran late
    result["pss_mb"] = round(pss, 1)
    result["worker_niceness"] = nice  # Ray starts workers at nice 15 unless told otherwise
    result["shards"] = len(shards)
    result["simulator_cpu_s"] = round(sim_cpu, 2)
    result["stages"] = _stage_deltas(stages0, stages1)
    result["cpu_s_by_process"] = {k: round(v, 2) for k, v in sorted(by_process.items(), key=lambda kv: -kv[1])}
    result["rss_mb_by_process"] = {k: round(v, 1) for k, v in sorted(rss_by_process.items(), key=lambda kv: -kv[1])}
    return result


def _stage_counts(supervisor: Any) -> dict[str, tuple[int, int]]:
    """(batches, messages) so far of every consumer stage, from the supervisor's fresh pings."""
    import ray

    handles = {role: ray.get(supervisor.handles.remote(role)) for role in ("device-processor", "pg-writer")}
    out = {}
    for role, hs in handles.items():
        for i, ping in enumerate(ray.get([h.ping.remote() for h in hs])):
            out[f"{role}-{i}"] = (int(ping.get("batches", 0)), int(ping.get("messages", 0)))
    return out


def _stage_deltas(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, Any]:
    out = {}
    for name, (b1, m1) in after.items():
        b0, m0 = before.get(name, (0, 0))
        out[name] = {"batches": b1 - b0, "messages": m1 - m0, "mean_batch": round((m1 - m0) / max(1, b1 - b0), 1)}
    return out


def _shard_handles(supervisor: Any) -> list[Any]:
    import ray

    return ray.get(supervisor.handles.remote("modbus-shard"))


def _wait_for_pg(settings: Settings, t0: int, t1: int, expected: int, grace_s: float) -> int:
    """Readings of the measured window that reached PostgreSQL, once the writers have caught up.

    Stops at the expected count, at the grace deadline, or when the count has not moved for 6 s
    (a writer under load commits one COPY every few seconds, so one still sample is not the end).
    """
    deadline, still_since, last = time.monotonic() + grace_s, time.monotonic(), -1
    while True:
        n = asyncio.run(_count_readings(settings.pg_dsn, t0, t1))
        now = time.monotonic()
        if n != last:
            still_since, last = now, n
        if n >= expected or now >= deadline or now - still_since >= 6.0:
            return n
        time.sleep(min(2.0, max(0.1, deadline - now)))


# --- the simulator and the shared stores --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Rig:
    settings: Settings  # pointing at the bench database
    run_id: str
    devices: list[dict[str, Any]]  # the simulator's manifest, port by port
    sim: subprocess.Popen[bytes]
    startup_s: float
    server_dsn: str  # the database the bench's own was created beside (and is dropped from)

    def manifest_for(self, meters: int) -> Path:
        """A manifest of the first `meters` meters (whole ports first, in port order)."""
        path = self.settings.var_dir / "bench" / f"manifest-{meters}.json"
        path.write_text(json.dumps(self.devices[:meters]))
        return path

    def probe_settings(self, label: str) -> Settings:
        """Fresh topics (and consumer groups) per probe: a lagging probe leaves no backlog to the next."""
        return self.settings.model_copy(update={"kafka_topic_prefix": f"bench-{self.run_id}-{label}.",
                                                "ray_namespace": f"meterray-bench-{self.run_id}-{label}"})


def start_rig(settings: Settings, meters: int, units_per_port: int) -> Rig:
    from meterray.app.demo import start_simulator

    soft, new = raise_open_files_limit()
    if new != soft:
        _say(f"open-files limit (RLIMIT_NOFILE) raised from {soft} to {new} for the simulator, the baseline and Ray")
    ports = -(-meters // units_per_port)
    need = 2 * ports + 200  # simulator: one listening and one accepted socket per port
    if new < need:
        _say(f"warning: open-files limit {new} is below the ~{need} the simulator needs for {ports} ports; "
             "raise the hard limit (ulimit -Hn) first")
    run_id = uuid.uuid4().hex[:6]
    server_dsn = settings.pg_dsn
    # A database per run, dropped at the end: a second bench on the same server cannot wipe this one's.
    dsn = asyncio.run(recreate_database(settings.pg_dsn, f"meterray_bench_{run_id}"))
    settings = settings.model_copy(update={"pg_dsn": dsn, "kafka_topic_prefix": f"bench-{run_id}.",
                                           "ray_namespace": f"meterray-bench-{run_id}"})
    (settings.var_dir / "log").mkdir(parents=True, exist_ok=True)
    manifest = settings.var_dir / "bench" / "manifest.json"
    _say(f"simulator: {meters} meters, {units_per_port} per TCP port ({ports} ports)")
    started = time.monotonic()
    sim = start_simulator(settings, meters, units_per_port, SIM_BASE_PORT, manifest)
    startup_s = time.monotonic() - started
    _say(f"simulator: ready in {startup_s:.1f} s, RSS {psutil.Process(sim.pid).memory_info().rss / 2**20:.0f} MiB")
    return Rig(settings, run_id, json.loads(manifest.read_text()), sim, startup_s, server_dsn)


def stop_rig(rig: Rig) -> None:
    os.killpg(rig.sim.pid, signal.SIGTERM)
    rig.sim.wait(timeout=30)
    asyncio.run(drop_database(rig.server_dsn, f"meterray_bench_{rig.run_id}"))


def _create_topics(settings: Settings) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    from storage.kafka.topics import ensure_topics

    ensure_topics(settings)
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for fut in admin.create_topics(
            [NewTopic(settings.topic(BASELINE_TOPIC), num_partitions=settings.kafka_partitions)]).values():
        fut.result(timeout=30)


def _delete_topics(settings: Settings) -> None:
    """The shared broker keeps no bench topics behind (each run or probe has its own prefix)."""
    from confluent_kafka.admin import AdminClient

    from storage.kafka.topics import ALL_TOPICS

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for topic, fut in admin.delete_topics([settings.topic(t) for t in (*ALL_TOPICS, BASELINE_TOPIC)]).items():
        try:
            fut.result(timeout=30)
        except Exception as err:  # already gone, or the broker is slow: not worth failing a benchmark for
            _say(f"topic {topic} not deleted: {err}")


# --- the plain run ------------------------------------------------------------------------------------

def run_benchmark(settings: Settings, meters: int, interval_s: float, seconds: float, units_per_port: int,
                  warmup_s: float = WARMUP_S) -> dict[str, Any]:
    rig = start_rig(settings, meters, units_per_port)
    w = Window(meters, interval_s, seconds, warmup_s)
    try:
        _create_topics(rig.settings)
        sim = psutil.Process(rig.sim.pid)
        manifest = rig.manifest_for(meters)
        try:
            baseline = run_baseline(rig.settings, manifest, w, sim)
            meterray = run_meterray(rig.settings, manifest, w, sim)
        finally:
            _delete_topics(rig.settings)
        sim_rss = sim.memory_info().rss / 2**20
    finally:
        stop_rig(rig)
    result = {"scenario": "modbus", "meters": meters, "interval_s": interval_s, "seconds": seconds,
              "units_per_port": units_per_port, "tcp_connections": -(-meters // units_per_port),
              "meterray": meterray, "baseline": baseline,
              "cpu_ratio_meterray_to_baseline": _ratio(meterray["cpu_s_per_1000_readings"],
                                                       baseline["cpu_s_per_1000_readings"]),
              "simulator": {"startup_s": round(rig.startup_s, 1), "rss_mb": round(sim_rss, 1)},
              "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
              "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "cpus": os.cpu_count()}
    _write("modbus.json", result)
    return result


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def _write(name: str, result: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    _say(f"written {RESULTS / name}")


# --- the knee search ----------------------------------------------------------------------------------

def meterray_held(r: dict[str, Any]) -> bool:
    """meterray holds when it keeps its poll rate and the window's readings reached PostgreSQL."""
    return held(r["achieved_polls_per_s"], r["target_polls_per_s"]) and held(
        r["readings_in_postgres"], r["readings"])


def baseline_held(r: dict[str, Any]) -> bool:
    return held(r["achieved_polls_per_s"], r["target_polls_per_s"])


def _search(side: str, plan: KneePlan, probe: Callable[[int], dict[str, Any]],
            holds: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    results: dict[int, bool] = {}
    probes: list[dict[str, Any]] = []
    started = time.monotonic()
    while (meters := next_probe(plan, results)) is not None:
        _say(f"knee {side}: probe {len(probes) + 1} at {meters} meters "
             f"({time.monotonic() - started:.0f} s into this side's search)")
        r = probe(meters)
        ok = holds(r)
        results[meters] = ok
        probes.append({"meters": meters, "held": ok, **r})
        lo, hi = bounds(results)
        share = r["achieved_polls_per_s"] / r["target_polls_per_s"] * 100
        pg = f", PostgreSQL {r['readings_in_postgres']}/{r['readings']} readings" if side == "meterray" else ""
        _say(f"knee {side}: {meters} meters → {r['achieved_polls_per_s']:.0f}/{r['target_polls_per_s']:.0f} polls/s "
             f"({share:.1f} %){pg} → {'held' if ok else 'FAILED'}; knee in [{lo}, {hi if hi is not None else '?'})")
    lo, hi = bounds(results)
    _say(f"knee {side}: {lo} meters ({len(probes)} probes, {time.monotonic() - started:.0f} s)")
    return {"knee_meters": lo, "first_failure_meters": hi, "probes": probes}


def find_knee(settings: Settings, interval_s: float, seconds: float, units_per_port: int, plan: KneePlan,
              warmup_s: float) -> dict[str, Any]:
    rig = start_rig(settings, plan.maximum, units_per_port)
    try:
        sim = psutil.Process(rig.sim.pid)

        def probe_baseline(meters: int) -> dict[str, Any]:
            s = rig.probe_settings(f"b{meters}")
            _create_topics(s)
            try:
                return run_baseline(s, rig.manifest_for(meters), Window(meters, interval_s, seconds, warmup_s), sim)
            finally:
                _delete_topics(s)

        def probe_meterray(meters: int) -> dict[str, Any]:
            s = rig.probe_settings(f"m{meters}")
            _create_topics(s)
            try:
                return run_meterray(s, rig.manifest_for(meters), Window(meters, interval_s, seconds, warmup_s), sim,
                                    KNEE_PG_GRACE_S)
            finally:
                _delete_topics(s)

        baseline = _search("baseline", plan, probe_baseline, baseline_held)
        meterray = _search("meterray", plan, probe_meterray, meterray_held)
    finally:
        stop_rig(rig)
    result = {"scenario": "modbus-knee", "interval_s": interval_s, "seconds_per_probe": seconds,
              "warmup_s": warmup_s, "units_per_port": units_per_port, "hold_fraction": HOLD_FRACTION,
              "search": {"start": plan.start, "step": plan.step, "maximum": plan.maximum},
              "baseline": baseline, "meterray": meterray,
              "knee_ratio_meterray_to_baseline": _ratio(meterray["knee_meters"], baseline["knee_meters"]),
              "simulator": {"startup_s": round(rig.startup_s, 1)},
              "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "cpus": os.cpu_count()}
    _write("modbus_knee.json", result)
    return result
