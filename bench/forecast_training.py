"""`meterray bench forecast`: training the global forecasting model for N simulated meters × D days of
half-hours as a Ray task (time, peak memory), and the forecast API's latency; bench/results/forecast.json.

Training: one Ray task (num_cpus=1, a fresh worker process: `max_calls=1`, so its peak RSS is this run's)
builds each simulated meter's half-hours from the simulator's exact counter integral (simulators/
load_series.py: in production the one data read, storage.postgres.forecasting.device_series, or its
ClickHouse successor, returns the same arrays) and runs meterray.forecasting.training.train: the holdout
backtest against the weekly seasonal naive, then the refit of the point and two quantile models, on at
most training.MAX_ROWS sampled rows. Reported separately: data build, training, total task time.

API latency: a bench database with `--api-devices` meters' counter readings (every half-hour, 36 days),
the model registered, the monitoring app on Serve; `--requests` sequential GETs of
/api/v1/devices/{id}/forecast?horizon=48 (each derives 37 days of half-hours from the archive and runs
two day-ahead predictions), p50/p95/max in ms.
"""
from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import time
import urllib.request
from datetime import date, datetime, timedelta, timezone
from typing import Any

import asyncpg
import ray

from bench.modbus import RESULTS
from meterray.forecasting import training
from meterray.forecasting.features import Series
from meterray.identity import Principal, Role
from meterray.settings import Settings
from meterray.tokens import issue_access_token
from protocols.modbus.profiles import PROFILES
from simulators.load_series import half_hour_energy
from simulators.meter_model import UTC_OFFSET_S, SimulatedMeter
from storage.postgres import forecasting as repo
from storage.postgres.databases import recreate_database
from storage.postgres.readings import ReadingsWriter

ENERGY = "1-0:1.8.0"


@ray.remote(num_cpus=2, max_calls=1, max_retries=0)
def train_simulated(meters: int, days: int, first: date, rounds: int) -> dict[str, Any]:
    """On the machine's 2 cores (LightGBM with 2 threads). CPU seconds are reported beside wall time:
    on a shared machine the wall time grows with the others' load, the CPU time much less."""
    t0 = time.perf_counter()
    series = {f"bench-{i:05d}": Series(first, half_hour_energy(f"bench-{i:05d}", first, days)) for i in range(meters)}
    t1 = time.perf_counter()
    cpu0 = _cpu()
    trained = training.train(series, rounds=rounds, params={"num_threads": 2})
    t2 = time.perf_counter()
    return {"data_seconds": t1 - t0, "training_seconds": t2 - t1, "training_cpu_seconds": _cpu() - cpu0,
            "chosen": trained.chosen, "rows": trained.rows,
            "metrics": trained.metrics, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "registry": training.registry_fields(trained)}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _load_api_data(dsn: str, devices: int, registry: dict[str, Any], seconds: float) -> None:
    now = datetime.now(timezone.utc)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO devices.connections (id, protocol, host, port, poll_interval_s, timeout_s,"
                           " enabled) VALUES ('c-bench', 'modbus_tcp', '192.0.2.1', 502, 1800, 1, false)")
        midnight = (now + timedelta(seconds=UTC_OFFSET_S)).replace(hour=0, minute=0, second=0, microsecond=0)
        start = midnight - timedelta(days=36, seconds=UTC_OFFSET_S)
        for i in range(devices):
            device_id = f"api-{i:04d}"
            await conn.execute("INSERT INTO devices.devices (id, name, protocol, profile, connection_id, unit_id)"
                               " VALUES ($1, $1, 'modbus_tcp', 'sdm630', 'c-bench', $2)", device_id, i + 1)
            meter = SimulatedMeter(device_id, PROFILES["sdm630"])
            rows, t = [], start
            while t <= now:
                rows.append((device_id, ENERGY, t, 1000.0 + meter.energy_since_install_kwh(t.timestamp()), "kWh", 0,
                             "bench"))
                t += timedelta(minutes=30)
            await ReadingsWriter().write(conn, _as_rows(rows))
        await repo.save_model(conn, registry, seconds)
    finally:
        await conn.close()


def _as_rows(rows: list[tuple[Any, ...]]) -> list[Any]:
    """The writer's row: timestamps as epoch ms or datetimes, whichever this checkout's writer declares."""
    from typing import get_args

    from storage.postgres.consumption import to_ms
    from storage.postgres.readings import ReadingRow

    as_ms = get_args(ReadingRow)[2] is int
    return [(d, q, to_ms(t) if as_ms else t, v, u, qual, s) for d, q, t, v, u, qual, s in rows]


def _latency(api: str, settings: Settings, devices: int, requests: int) -> dict[str, float]:
    from uuid import uuid4

    token = issue_access_token(Principal(uuid4(), None, Role.ADMIN), settings.signing_key, 3600).token
    times = []
    for i in range(requests + 2):
        req = urllib.request.Request(f"{api}/api/v1/devices/api-{i % devices:04d}/forecast?horizon=48",
                                     headers={"Authorization": f"Bearer {token}"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=120) as resp:
            body = json.loads(resp.read())
        if i >= 2:  # the first two load the model into the replica
            times.append((time.perf_counter() - t0) * 1000)
        assert len(body["points"]) == 48
    times.sort()
    return {"requests": requests, "p50_ms": statistics.median(times),
            "p95_ms": times[int(0.95 * (len(times) - 1))], "max_ms": times[-1]}


def run_benchmark(settings: Settings, meters: int, days: int, rounds: int, api_devices: int, requests: int) -> dict:
    from meterray.app.runtime import init_ray, start_api
    from storage.postgres.migrate import migrate

    init_ray(settings, dashboard=False)
    first = date(2025, 1, 1)
    t0 = time.perf_counter()
    result = ray.get(train_simulated.remote(meters, days, first, rounds))
    task_s = time.perf_counter() - t0
    registry = result.pop("registry")
    out: dict[str, Any] = {
        "scenario": "forecast", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "meters": meters, "days": days, "half_hours": meters * days * 48, "rounds": rounds,
        "max_rows": training.MAX_ROWS, "task_seconds": task_s, "load_average_1m": os.getloadavg()[0], **result,
    }
    print(json.dumps(out, indent=2))
    if api_devices:
        dsn = asyncio.run(recreate_database(settings.pg_dsn, "meterray_bench_forecast"))
        bench_settings = settings.model_copy(update={"pg_dsn": dsn})
        asyncio.run(migrate(dsn, profiles=list(PROFILES)))
        asyncio.run(_load_api_data(dsn, api_devices, registry, result["training_seconds"]))
        api = start_api(bench_settings)
        out["api"] = {"devices": api_devices, **_latency(api, bench_settings, api_devices, requests)}
        print(json.dumps(out["api"], indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "forecast.json").write_text(json.dumps(out, indent=2) + "\n")
    return out

