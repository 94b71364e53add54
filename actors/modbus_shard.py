"""ModbusShard: owns up to a few thousand Modbus TCP connections, one asyncio task each.

Each connection is polled on a fixed grid of slots (its interval, phase-shifted by a stable hash so
connections do not all fire at once). A reading's timestamp is its slot, so a repeated poll of a slot
is the same key downstream. Devices behind one endpoint are read one request at a time (RTU
gateways allow no more). Results and failures go to Kafka `readings.raw`, keyed by device.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import struct
import time
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import replace

import ray

from actors import metrics
from meterray.backoff import Backoff
from meterray.config import connection_problems
from meterray.domain import FailureKind, ModbusConnection, PollFailure, ReadingBatch
from meterray.settings import Settings
from protocols.modbus.client import ModbusEndpoint, ModbusError
from protocols.modbus.profiles import PROFILES
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer, DeliveryError

log = logging.getLogger(__name__)

# Failures after which the endpoint itself is suspect: reconnect with backoff before polling again.
_ENDPOINT_FAILURES = {FailureKind.CONNECTION_LOST, FailureKind.CONNECTION_REFUSED}


class PollStats:
    """Counters and recent poll latencies (poll start → Kafka acknowledgement) of one shard."""

    def __init__(self) -> None:
        self.polls_ok = 0
        self.polls_failed = 0
        self.readings = 0
        self.dead_letters = 0
        self.overruns = 0  # slots skipped because the previous cycle ran late
        self.delivery_failures = 0  # cycles whose data Kafka did not acknowledge
        self.values_unavailable = 0  # quantities a meter answered as "no value" (left out of its batch)
        self.latencies_ms: deque[float] = deque(maxlen=50_000)

    def summary(self) -> dict[str, object]:
        lat = sorted(self.latencies_ms)
        pick = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2)) if lat else (lambda q: None)
        return {"polls_ok": self.polls_ok, "polls_failed": self.polls_failed, "readings": self.readings,
                "dead_letters": self.dead_letters, "overruns": self.overruns,
                "delivery_failures": self.delivery_failures, "values_unavailable": self.values_unavailable,
                "p50_ms": pick(0.50), "p99_ms": pick(0.99), "latency_samples": len(lat)}


class ModbusShardCore:
    def __init__(self, settings: Settings, producer: AsyncProducer) -> None:
        self._settings = settings
        self._producer = producer
        self._raw_topic = settings.topic(topics.READINGS_RAW)
        self._dlq_topic = settings.topic(topics.READINGS_DLQ)
        self._tasks: dict[str, tuple[ModbusConnection, asyncio.Task[None]]] = {}
        self.stats = PollStats()

    async def assign(self, connections: Iterable[ModbusConnection]) -> dict[str, int]:
        """Make the shard run exactly these connections; untouched ones keep running."""
        wanted = {c.connection_id: c for c in connections}
        stopped = [cid for cid, (c, _) in self._tasks.items() if wanted.get(cid) != c]
        for cid in stopped:
            _, task = self._tasks.pop(cid)
            task.cancel()
        started = 0
        for cid, conn in wanted.items():
            if cid not in self._tasks:
                self._tasks[cid] = (conn, asyncio.create_task(self._poll_connection(conn), name=f"modbus:{cid}"))
                started += 1
        return {"running": len(self._tasks), "started": started, "stopped": len(stopped)}

    def connection_ids(self) -> list[str]:
        """The connections this shard runs; raises if one's task died, so the supervisor replaces the shard."""
        for cid, (_, task) in self._tasks.items():
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"poll task of {cid} died: {task.exception()!r}")
        return sorted(self._tasks)

    async def stop(self) -> None:
        for _, task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*(t for _, t in self._tasks.values()), return_exceptions=True)
        self._tasks.clear()

    async def _poll_connection(self, conn: ModbusConnection) -> None:
        conn = await self._usable_part(conn)  # bad configuration fails per device, typed, and never raises
        interval_ms = int(conn.poll_interval_s * 1000)
        phase_ms = zlib.crc32(conn.connection_id.encode()) % interval_ms
        endpoint = ModbusEndpoint(conn.host, conn.port, conn.timeout_s)
        backoff = Backoff(cap_s=30.0)
        connected = False
        slot = _next_slot(_now_ms(), interval_ms, phase_ms)
        try:
            while True:
                await asyncio.sleep(max(0.0, (slot - _now_ms()) / 1000))
                try:
                    if not connected:
                        await endpoint.connect()
                        connected = True
                    connected = await self._poll_cycle(conn, endpoint, slot)
                except ModbusError as err:  # could not connect: every device behind it shares that
                    await self._publish([], [self._failure(d.device_id, slot, conn, err.kind, str(err))
                                             for d in conn.devices], [], conn)
                except DeliveryError as err:
                    # Kafka refused this slot's data: it is not retried (the next slot reads the
                    # counters again), but it is counted and said, and polling backs off.
                    self.stats.delivery_failures += 1
                    log.warning("%s: Kafka did not take slot %d: %s", conn.connection_id, slot, err)
                    connected = False
                if connected:
                    backoff.reset()
                    slot += interval_ms
                    if slot <= _now_ms():
                        self.stats.overruns += 1
                        slot = _next_slot(_now_ms(), interval_ms, phase_ms)
                else:
                    await endpoint.close()
                    slot = _next_slot(_now_ms() + backoff.next_delay() * 1000, interval_ms, phase_ms)
        finally:
            await endpoint.close()

    async def _usable_part(self, conn: ModbusConnection) -> ModbusConnection:
        """The devices of `conn` that can be polled, once its host resolves.

        Stored configuration the code cannot use (a profile it no longer knows, an interval no loop can
        run, stored before the constraints existed: meterray.config) fails only the devices it concerns,
        with a CONFIGURATION failure and its reason on every slot, so the API shows why; when no
        device is usable this never returns (until the assignment changes). A host name that does
        not resolve fails every device with HOST_UNRESOLVED until it does. Nothing here raises, so
        a bad connection never kills the shard's other connections or sends it into a restart loop.
        """
        problems, per_device = connection_problems(conn, PROFILES.keys())
        unusable = ({d.device_id: "; ".join(problems) for d in conn.devices} if problems else per_device)
        if unusable:
            log.warning("%s: refusing %d device(s): %s", conn.connection_id, len(unusable), unusable)
            report = asyncio.create_task(self._report_every_slot(conn, unusable, FailureKind.CONFIGURATION),
                                         name=f"modbus-config:{conn.connection_id}")
            if len(unusable) == len(conn.devices):
                await report  # runs until this connection's task is cancelled
            this = asyncio.current_task()
            assert this is not None
            this.add_done_callback(lambda _: report.cancel())
            conn = replace(conn, devices=tuple(d for d in conn.devices if d.device_id not in unusable))
        while True:
            try:
                await asyncio.get_running_loop().getaddrinfo(conn.host, conn.port, type=socket.SOCK_STREAM)
                return conn
            except (OSError, UnicodeError) as err:  # socket.gaierror is an OSError; an odd name can be either
                reason = f"host {conn.host!r} does not resolve ({getattr(err, 'strerror', None) or err}); " \
                         "retrying every poll slot"
                await self._report_every_slot(conn, {d.device_id: reason for d in conn.devices},
                                              FailureKind.HOST_UNRESOLVED, once=True)

    async def _report_every_slot(self, conn: ModbusConnection, reasons: dict[str, str], kind: FailureKind,
                                 once: bool = False) -> None:
        # An interval the configuration got wrong is not trusted for reporting: 1 s .. 60 s.
        interval_s = conn.poll_interval_s if math.isfinite(conn.poll_interval_s) else 60.0
        interval_ms = int(min(max(interval_s, 1.0), 60.0) * 1000)
        phase_ms = zlib.crc32(conn.connection_id.encode()) % interval_ms
        while True:
            slot = _next_slot(_now_ms(), interval_ms, phase_ms)
            await asyncio.sleep(max(0.0, (slot - _now_ms()) / 1000))
            try:
                await self._publish([], [self._failure(d, slot, conn, kind, r) for d, r in reasons.items()], [], conn)
            except Exception as err:  # reporting must never end this connection's task (nor the shard)
                log.warning("%s: could not publish the %s failures: %s", conn.connection_id, kind, err)
            if once:
                return
            await asyncio.sleep(0.001)  # the next slot, not this one again

    async def _poll_cycle(self, conn: ModbusConnection, endpoint: ModbusEndpoint, slot: int) -> bool:
        """Read every device once; returns False when the endpoint must be reconnected."""
        started = time.perf_counter()
        batches: list[ReadingBatch] = []
        failures: list[PollFailure] = []
        dead: list[tuple[str, bytes, str]] = []
        healthy = True
        source = f"modbus://{conn.host}:{conn.port}"
        for device in conn.devices:
            if not healthy:  # the endpoint is gone: every remaining device shares that failure
                failures.append(self._failure(device.device_id, slot, conn, failures[-1].kind, failures[-1].detail))
                continue
            try:
                values, missing = await endpoint.read_device(PROFILES[device.profile], device.unit_id)
            except ModbusError as err:
                failures.append(self._failure(device.device_id, slot, conn, err.kind, str(err)))
                healthy = err.kind not in _ENDPOINT_FAILURES
                if err.raw_words is not None:  # an answer that cannot be decoded at all: keep it, with its reason
                    raw = struct.pack(f">{len(err.raw_words)}H", *err.raw_words)
                    dead.append((device.device_id, raw, str(err)))
                continue
            # The meter answered. Quantities it reports as "no value" (its declared error value, NaN)
            # are left out: no reading is better than a made-up number, and a meter saying "I have
            # nothing for Urms L2" is healthy, so this is neither a failure nor a dead letter. The
            # batch goes out even if empty: it is what keeps the device online.
            batches.append(ReadingBatch(device.device_id, slot, f"{source}/{device.unit_id}", tuple(values)))
            self.stats.values_unavailable += len(missing)
        await self._publish(batches, failures, dead, conn)
        # Every device's data waited for the whole cycle: poll start to Kafka acknowledgement.
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.stats.latencies_ms.extend([elapsed_ms] * len(conn.devices))
        metrics.poll_latency_ms().observe(elapsed_ms, tags={"protocol": "modbus"})
        return healthy

    async def _publish(self, batches: list[ReadingBatch], failures: list[PollFailure],
                       dead: list[tuple[str, bytes, str]], conn: ModbusConnection) -> None:
        parts = self._settings.kafka_partitions
        out = [(self._raw_topic, topics.partition_for(b.device_id, parts), b.device_id.encode(), codec.encode(b))
               for b in batches]
        out += [(self._raw_topic, topics.partition_for(f.device_id, parts), f.device_id.encode(), codec.encode(f))
                for f in failures]
        out += [(self._dlq_topic, topics.partition_for(d, parts), d.encode(),
                 codec.encode_dead_letter(reason, raw, stage="modbus-shard", device_id=d,
                                          connection=conn.connection_id))
                for d, raw, reason in dead]
        await self._producer.send_many(out)
        n_readings = sum(len(b.values) for b in batches)
        self.stats.polls_ok += len(batches)
        self.stats.polls_failed += len(failures)
        self.stats.readings += n_readings
        self.stats.dead_letters += len(dead)
        metrics.count(metrics.polls(), len(batches), protocol="modbus", outcome="ok")
        metrics.count(metrics.polls(), len(failures), protocol="modbus", outcome="failed")
        metrics.count(metrics.readings(), n_readings, stage="modbus-shard")
        metrics.count(metrics.dead_letters(), len(dead), stage="modbus-shard")

    @staticmethod
    def _failure(device_id: str, slot: int, conn: ModbusConnection, kind: FailureKind, detail: str) -> PollFailure:
        return PollFailure(device_id, slot, f"modbus://{conn.host}:{conn.port}", kind, detail)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _next_slot(after_ms: float, interval_ms: int, phase_ms: int) -> int:
    """The first slot (phase + k·interval) at or after `after_ms`."""
    k = -(-(int(after_ms) - phase_ms) // interval_ms)
    return phase_ms + k * interval_ms


@ray.remote(num_cpus=0, max_restarts=0)
class ModbusShard:
    """Ray actor around ModbusShardCore; the supervisor recreates it (same assignment) when it dies."""

    def __init__(self, settings: Settings, name: str) -> None:
        logging.basicConfig(level=settings.log_level)
        self._name = name
        self._producer = AsyncProducer(settings.kafka_bootstrap)
        self._core = ModbusShardCore(settings, self._producer)

    async def assign(self, connections: list[ModbusConnection]) -> dict[str, int]:
        await self._producer.start()
        return await self._core.assign(connections)

    async def ping(self) -> dict[str, object]:
        return {"role": "modbus-shard", "name": self._name, "pid": os.getpid(),
                "connections": self._core.connection_ids(), **self._core.stats.summary()}

    async def reset_stats(self) -> None:
        self._core.stats = PollStats()

    async def stop(self) -> None:
        await self._core.stop()
        await self._producer.close()
