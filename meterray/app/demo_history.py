"""The demo's history: days of readings of its simulated meters, backfilled at start, and a forecast model
trained on them, so every page of the cabinet has something real to show from the first minute.

Through the real pipeline, not into the tables: the readings (simulators.history: the simulator's own model
at past slots) are produced to `readings.raw` before the pollers start, keyed and partitioned by device as
a ModbusShard does. Kafka keeps a partition in order, so each device processor applies a meter's history
before its first live poll: counters only rise, readings_current ends on the live value, and the same
writers fill the PostgreSQL archive and the ClickHouse copy.

How the device processor takes them (meterray.validation, meterray.health): a reading is LATE when it is
received more than max(1 min, 3 poll intervals) after its stamp, and history is exactly that, so each
history value carries the LATE flag, an honest mark that it was not polled live (nothing downstream drops
or discounts LATE values). Health measures silence in *receive* time (Health.on_readings), so history
received now is activity now: no device goes offline and back for it, and events it causes are stamped in
the past, which the notifier ignores (notify_max_event_age).

Idempotent: slots a quantity's archive already covers (its oldest to its newest reading) are left out, so
a second start produces only the slots since the previous one stopped, and rewrites nothing.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from meterray.settings import Settings
from simulators import history
from storage.kafka import codec, lag, topics
from storage.kafka.producer import AsyncProducer, OutMessage
from storage.postgres.readings import stored_spans

CHUNK = 5_000  # messages per send_many: a bounded amount in flight
Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Meter:
    device_id: str
    profile: str


@dataclass(frozen=True, slots=True)
class Produced:
    window: history.Window
    meters: int
    readings: int  # batches: one per meter and slot
    values: int  # rows of the archive they make
    seconds: float
    started: float  # time.monotonic() when producing began
    raw_ends: dict[int, int]  # readings.raw's end offsets right after: the pipeline is through when past them


def meters_of(manifest: Sequence[dict[str, Any]]) -> list[Meter]:
    return [Meter(m["device_id"], m["profile"]) for m in manifest]


async def produce_history(settings: Settings, meters: Sequence[Meter], win: history.Window,
                          progress: Progress = print) -> Produced:
    """Produce each meter's history to `readings.raw` (what the archive does not hold yet)."""
    t0, started = time.perf_counter(), time.monotonic()
    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        spans = await stored_spans(conn, [m.device_id for m in meters])
    finally:
        await conn.close()
    topic, parts = settings.topic(topics.READINGS_RAW), settings.kafka_partitions
    readings = values = 0
    async with AsyncProducer(settings.kafka_bootstrap) as producer:
        out: list[OutMessage] = []
        for n, m in enumerate(meters, start=1):
            for batch in history.history(m.device_id, m.profile, win, spans.get(m.device_id)):
                out.append((topic, topics.partition_for(m.device_id, parts), m.device_id.encode(), codec.encode(batch)))
                readings += 1
                values += len(batch.values)
                if len(out) >= CHUNK:
                    await producer.send_many(out)
                    out = []
            if n % 10 == 0 or n == len(meters):
                progress(f"  history: {n}/{len(meters)} meters, {readings:,} readings ({values:,} values) produced")
        await producer.send_many(out)
    ends = await asyncio.to_thread(lag.end_offsets, settings.kafka_bootstrap, topic)
    return Produced(win, len(meters), readings, values, time.perf_counter() - t0, started, ends)


def wait_through_pipeline(settings: Settings, produced: Produced, timeout_s: float = 600.0,
                          progress: Progress = print) -> float:
    """Block until the device processor has applied everything produced and both writers (PostgreSQL and
    ClickHouse) have stored its output; returns the seconds waited. TimeoutError names the stage behind."""
    from actors import ch_writer, device_processor, pg_writer

    t0 = time.monotonic()
    bootstrap = settings.kafka_bootstrap
    stages = [(device_processor.GROUP_ID, topics.READINGS_RAW, produced.raw_ends)]
    last_said = 0.0
    while stages:
        group, topic, ends = stages[0]
        behind = lag.caught_up(bootstrap, settings.topic(group), settings.topic(topic), ends)
        if behind == 0:
            stages.pop(0)
            if group == device_processor.GROUP_ID:  # its output is in `readings` now: the writers are next
                ends = lag.end_offsets(bootstrap, settings.topic(topics.READINGS))
                stages += [(pg_writer.GROUP_ID, topics.READINGS, ends)]
                if settings.ch_writers:
                    stages += [(ch_writer.GROUP_ID, topics.READINGS, ends)]
            continue
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"history: {group} still has {behind:,} records of {topic} to go after "
                               f"{timeout_s:.0f} s")
        if time.monotonic() - last_said >= 5:
            progress(f"  history: {group.removeprefix('meterray-')} has {behind:,} records of {topic} to go")
            last_said = time.monotonic()
        time.sleep(0.5)
    return time.monotonic() - t0


async def count_history(settings: Settings, meters: Sequence[Meter], win: history.Window) -> int:
    """Rows of the archive the history makes for these meters within its window."""
    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM monitoring.readings WHERE device_id = ANY($1::text[]) AND source = $2"
            " AND ts >= $3 AND ts <= $4", [m.device_id for m in meters], history.SOURCE,
            _dt(min(win.detailed_from_ms, win.energy_from_ms)), _dt(win.until_ms))
        return n
    finally:
        await conn.close()


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def train_forecast(settings: Settings, meters: Sequence[Meter], days: int,
                   progress: Progress = print) -> dict[str, Any]:
    """The project's training task (actors.forecast_training.train_model, `meterray forecast train`) over the
    demo's meters and the `days` whole local days before today; registers a model version."""
    import ray

    from actors.forecast_training import train_model

    progress(f"forecast: training the model on {len(meters)} meters × {days} days of half-hours …")
    t0 = time.monotonic()
    summary: dict[str, Any] = ray.get(train_model.remote(settings, days, [m.device_id for m in meters]))
    mase = summary["metrics"]
    progress(f"forecast: model v{summary['version']} ({summary['chosen']}) over {summary['devices']} meters, "
             f"{summary['rows']:,} training rows, fitted in {summary['training_seconds']:.1f} s "
             f"({time.monotonic() - t0:.1f} s with reading the archive); backtest MASE {mase['model']['mase']:.3f} "
             f"vs weekly naive {mase['seasonal_naive_weekly']['mase']:.3f}")
    return summary


class DemoHistory:
    """The demo's start-up steps: `produce` before the pollers start, `land_and_train` once the pipeline runs."""

    def __init__(self, settings: Settings, meters: Sequence[Meter], days: int, forecast_days: int,
                 progress: Progress = print, until: datetime | None = None) -> None:
        self.settings, self.meters, self.days, self.forecast_days = settings, list(meters), days, forecast_days
        self.progress = progress
        self.window = history.window(until or datetime.now(timezone.utc), days, forecast_days,
                                     settings.default_timezone)
        self.produced: Produced | None = None

    def produce(self) -> Produced:
        win = self.window
        first = _dt(min(win.detailed_from_ms, win.energy_from_ms)).astimezone(ZoneInfo(self.settings.default_timezone))
        self.progress(f"history: {self.days} days × {len(self.meters)} meters of every quantity"
                      + (f", and A+ from {first:%Y-%m-%d %H:%M %Z} (the forecast's {self.forecast_days} days)"
                         if self.forecast_days else "")
                      + f", every {win.step_ms // 1000 // 60} min, from the simulator's model")
        self.produced = asyncio.run(produce_history(self.settings, self.meters, win, self.progress))
        return self.produced

    def land_and_train(self) -> None:
        p = self.produced
        if p is None:
            return
        if p.readings:
            waited = wait_through_pipeline(self.settings, p, progress=self.progress)
            stored = asyncio.run(count_history(self.settings, self.meters, p.window))
            # Wall clock from the first record produced to the last one stored by both writers: the runtime's
            # start-up (Ray, actors, the API) lies in between when the history is produced before it.
            total = time.monotonic() - p.started
            self.progress(f"history: {self.days} days × {p.meters} meters … {p.readings:,} readings ({p.values:,} "
                          f"values) written in {total:.0f} s ({p.values / total:,.0f} values/s; generated and "
                          f"produced in {p.seconds:.0f} s, the rest waited {waited:.0f} s after the runtime was "
                          f"up); the archive holds {stored:,} history values")
        else:
            self.progress("history: already in the archive, nothing to add")
        if self.forecast_days:
            try:
                train_forecast(self.settings, self.meters, self.forecast_days, self.progress)
            except Exception as err:  # the demo runs on without a model: the forecast pages say so
                self.progress(f"forecast: not trained ({err})")
