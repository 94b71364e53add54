"""Training the global forecasting model as a Ray task, on demand and on a schedule.

`train_model` is the task: it reads each device's half-hours (storage.postgres.forecasting.device_series,
the one data-access function), trains (meterray.forecasting.training: backtest against the weekly
seasonal naive, choose, refit with quantile models) and registers the version in PostgreSQL.
`ForecastScheduler` is a detached actor that runs the task every `every_s` seconds.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import ray

from meterray.forecasting import training
from meterray.forecasting.features import Series
from meterray.settings import Settings
from protocols.modbus.profiles import wrap_value
from storage.postgres import consumption as cons
from storage.postgres import forecasting as repo

log = logging.getLogger("meterray.forecasting")

HISTORY_DAYS = 365
READ_CONCURRENCY = 4  # devices read at once (each one derivation query)


async def read_series(conn: asyncpg.Pool, settings: Settings, device_ids: list[str], days: int,
                      now: datetime) -> dict[str, Series]:
    """The last `days` whole local days before today of each device (its own time zone)."""
    sem = asyncio.Semaphore(READ_CONCURRENCY)
    now_ms = cons.to_ms(now)

    async def one(device_id: str) -> tuple[str, Series | None]:
        async with sem:
            device = await cons.metering(conn, device_id, organisation_id=None)  # training: every device
            if device is None:
                return device_id, None
            tz = device.timezone or settings.default_timezone
            today = now.astimezone(ZoneInfo(tz)).date()
            return device_id, await repo.device_series(conn, device, tz, today - timedelta(days=days), days, now_ms,
                                                       wrap_value(device.profile, repo.ACTIVE_IMPORT))

    got = await asyncio.gather(*(one(d) for d in device_ids))
    return {k: s for k, s in got if s is not None}


async def _train(settings: Settings, days: int, device_ids: list[str] | None, rounds: int) -> dict[str, Any]:
    pool = await asyncpg.create_pool(settings.pg_dsn, min_size=1, max_size=READ_CONCURRENCY)
    try:
        ids = device_ids if device_ids is not None else await repo.forecastable_devices(pool)
        series = await read_series(pool, settings, ids, days, datetime.now(timezone.utc))
        t0 = time.perf_counter()
        trained = training.train(series, rounds=rounds)
        seconds = time.perf_counter() - t0
        version = await repo.save_model(pool, training.registry_fields(trained), seconds)
    finally:
        await pool.close()
    log.info("forecast model v%d: %s over %d devices, %s", version, trained.chosen, trained.devices, trained.metrics)
    return {"version": version, "chosen": trained.chosen, "devices": trained.devices, "rows": trained.rows,
            "metrics": trained.metrics, "training_seconds": seconds}


@ray.remote(num_cpus=1, max_retries=0)
def train_model(settings: Settings, days: int = HISTORY_DAYS, device_ids: list[str] | None = None,
                rounds: int = training.ROUNDS) -> dict[str, Any]:
    """Train on every device (or `device_ids`) and register the version; returns its summary."""
    return asyncio.run(_train(settings, days, device_ids, rounds))


@ray.remote(num_cpus=0)
class ForecastScheduler:
    """Runs `train_model` every `every_s` seconds (the first run at once); one run at a time."""

    def __init__(self, settings: Settings, every_s: float, days: int = HISTORY_DAYS) -> None:
        self._settings, self._every_s, self._days = settings, every_s, days
        self._last: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                self._last = await train_model.remote(self._settings, self._days)
            except Exception as err:  # a failed run is reported and retried at the next tick
                log.exception("forecast training failed")
                self._last = {"error": repr(err)}
            await asyncio.sleep(self._every_s)

    async def last(self) -> dict[str, Any] | None:
        return self._last
