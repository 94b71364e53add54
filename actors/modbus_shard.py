"""ModbusShard: owns up to a few thousand Modbus TCP connections, one asyncio task each.

Each connection is polled on a fixed grid of slots (its interval, phase-shifted by a stable hash so
connections do not all fire at once). A reading's timestamp is its slot, so a repeated poll of a slot
is the same key downstream. Devices behind one endpoint are read one request at a time (RTU
gateways allow no more). Results and failures go to Kafka `readings.raw`, keyed by device.

Polling and delivery are decoupled: a poll cycle puts its records into the shard's bounded outbox
(actors/shard_outbox.py) and keeps to its slot grid; one sender task drains the outbox to Kafka in
large batches and keeps every record until Kafka acknowledged it. A Kafka outage therefore neither
stalls polling nor closes a Modbus connection; it fills the outbox, which is emptied on recovery.
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
from actors.logs import setup_logging
from actors.shard_outbox import Dropped, Entry, Outbox, OutRecord
from meterray.backoff import Backoff
from meterray.config import connection_problems
from meterray.domain import FailureKind, ModbusConnection, PollFailure, ReadingBatch
from meterray.settings import Settings
from protocols.modbus.client import ModbusEndpoint, ModbusError
from protocols.modbus.profiles import PROFILES
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer, is_permanent

log = logging.getLogger(__name__)

# Failures after which the endpoint itself is suspect: reconnect with backoff before polling again.
_ENDPOINT_FAILURES = {FailureKind.CONNECTION_LOST, FailureKind.CONNECTION_REFUSED}

# The sender hands Kafka at most this many records at once; a backlog drains in batches this size.
SEND_BATCH_RECORDS = 5000
OVERFLOW_LOG_EVERY_S = 10.0

# librdkafka settings of a shard's producer. The outbox is the buffer of record, so librdkafka's own
# queue only ever holds one sender batch, and a message that Kafka has not taken within 30 s comes
# back as a delivery failure (re-produced from the outbox) rather than sitting unseen for the
# default 5 min: an outage shows in the shard's stats and log within 30 s, while a broker restart
# or leader move (a few seconds) goes unnoticed. Reconnects are retried every ≤ 1 s (default up to
# 10 s) so delivery resumes within about a second of the broker coming back.
# linger.ms 20 (the pipeline's default is 5): nothing awaits these acknowledgements in a poll cycle
# (the outbox does), so a shard can afford larger, fewer produce requests: less CPU here and in the
# broker for the same records.
SHARD_PRODUCER_CONFIG: dict[str, object] = {
    "linger.ms": 20,
    "message.timeout.ms": 30_000,
    "queue.buffering.max.messages": 4 * SEND_BATCH_RECORDS,
    "queue.buffering.max.kbytes": 64 * 1024,
    "reconnect.backoff.ms": 100,
    "reconnect.backoff.max.ms": 1000,
}


class PollStats:
    """Counters and recent poll latencies (poll start → Kafka acknowledgement) of one shard."""

    def __init__(self) -> None:
        self.polls_ok = 0
        self.polls_failed = 0
        self.readings = 0
        self.dead_letters = 0
        self.overruns = 0  # slots skipped because the previous cycle ran past them whole (each: SKIPPED)
        self.connects = 0  # Modbus TCP connections opened (a healthy endpoint keeps its one)
        self.delivery_failures = 0  # sender batches of which Kafka did not acknowledge every record
        self.values_unavailable = 0  # quantities a meter answered as "no value" (left out of its batch)
        self.delivered = 0  # records Kafka acknowledged
        self.redelivered = 0  # records produced again after a delivery failure
        self.refused = 0  # records Kafka refused for good (too large, not authorised), logged
        self.buffer_dropped_polls = 0  # poll cycles thrown out of a full outbox
        self.buffer_dropped_records = 0
        self.buffer_dropped_readings = 0
        self.latencies_ms: deque[float] = deque(maxlen=50_000)

    def summary(self) -> dict[str, object]:
        lat = sorted(self.latencies_ms)
        pick = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2)) if lat else (lambda q: None)
        return {"polls_ok": self.polls_ok, "polls_failed": self.polls_failed, "readings": self.readings,
                "dead_letters": self.dead_letters, "overruns": self.overruns, "connects": self.connects,
                "delivery_failures": self.delivery_failures, "values_unavailable": self.values_unavailable,
                "delivered": self.delivered, "redelivered": self.redelivered, "refused": self.refused,
                "buffer_dropped_polls": self.buffer_dropped_polls,
                "buffer_dropped_records": self.buffer_dropped_records,
                "buffer_dropped_readings": self.buffer_dropped_readings,
                "p50_ms": pick(0.50), "p99_ms": pick(0.99), "latency_samples": len(lat)}


class ModbusShardCore:
    def __init__(self, settings: Settings, producer: AsyncProducer) -> None:
        self._settings = settings
        self._producer = producer
        self._raw_topic = settings.topic(topics.READINGS_RAW)
        self._dlq_topic = settings.topic(topics.READINGS_DLQ)
        self._tasks: dict[str, tuple[ModbusConnection, asyncio.Task[None]]] = {}
        self.stats = PollStats()
        self.outbox = Outbox(int(settings.shard_buffer_mb * 2**20))
        self._outbox_ready = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._dropped_since_log = Dropped()
        self._last_overflow_log = 0.0

    async def assign(self, connections: Iterable[ModbusConnection]) -> dict[str, int]:
        """Make the shard run exactly these connections; untouched ones keep running."""
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_loop(), name="kafka-sender")
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
        if self._sender is not None and self._sender.done() and not self._sender.cancelled():
            raise RuntimeError(f"Kafka sender died: {self._sender.exception()!r}")
        for cid, (_, task) in self._tasks.items():
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"poll task of {cid} died: {task.exception()!r}")
        return sorted(self._tasks)

    def buffer_summary(self) -> dict[str, int]:
        return {"buffered_records": self.outbox.records, "buffered_polls": len(self.outbox),
                "buffered_bytes": self.outbox.nbytes, "buffer_max_bytes": self.outbox.max_bytes,
                "buffer_peak_records": self.outbox.peak_records}

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Stop polling, give the sender `drain_timeout_s` to hand the outbox to Kafka, then stop it."""
        for _, task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*(t for _, t in self._tasks.values()), return_exceptions=True)
        self._tasks.clear()
        deadline = time.monotonic() + drain_timeout_s
        while len(self.outbox) and self._sender is not None and not self._sender.done():
            if time.monotonic() > deadline:
                log.warning("stopping with %d records Kafka has not taken", self.outbox.records)
                break
            await asyncio.sleep(0.05)
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
            self._sender = None

    async def _poll_connection(self, conn: ModbusConnection) -> None:
        conn = await self._usable_part(conn)  # bad configuration fails per device, typed, and never raises
        interval_ms = int(conn.poll_interval_s * 1000)
        phase_ms = _phase_ms(conn.connection_id, interval_ms)
        endpoint = ModbusEndpoint(conn.host, conn.port, conn.timeout_s)
        backoff = Backoff(cap_s=30.0)
        connected = False
        slot = _next_slot(_now_ms(), interval_ms, phase_ms)
        try:
            while True:
                await asyncio.sleep(max(0.0, (slot - _now_ms()) / 1000))
                slot = self._due_slot(conn, slot, interval_ms)
                attempted = time.perf_counter()
                try:
                    if not connected:
                        await endpoint.connect()
                        connected = True
                        self.stats.connects += 1
                    connected = await self._poll_cycle(conn, endpoint, slot)
                except ModbusError as err:  # could not connect: every device behind it shares that
                    self._publish([], [self._failure(d.device_id, slot, conn, err.kind, str(err))
                                       for d in conn.devices], [], conn, slot, attempted)
                # Kafka is not awaited here: whatever it does, this connection stays on its grid.
                if connected:
                    backoff.reset()
                    slot += interval_ms
                else:
                    await endpoint.close()
                    slot = _next_slot(_now_ms() + backoff.next_delay() * 1000, interval_ms, phase_ms)
        finally:
            await endpoint.close()

    def _due_slot(self, conn: ModbusConnection, slot: int, interval_ms: int) -> int:
        """The slot to poll now: `slot` while its interval lasts (a cycle that ran into it, or a late
        wake-up, still polls it), else the one under way. Slots that passed whole (the previous cycle
        or the process ran late) were not polled, and each says so on the grid (SKIPPED, per device)
        instead of leaving a gap nobody can explain."""
        now = _now_ms()
        if now < slot + interval_ms:
            return slot
        current = slot + (now - slot) // interval_ms * interval_ms
        missed = range(slot, current, interval_ms)
        self.stats.overruns += len(missed)
        detail = f"not polled: the poller was busy until {now} (its previous cycle, or a stalled process)"
        self._publish([], [self._failure(d.device_id, s, conn, FailureKind.SKIPPED, detail)
                           for s in missed for d in conn.devices], [], conn, slot, started=None)
        return current

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
            log.warning("%s: refusing %d device(s): %s", conn.connection_id, len(unusable), unusable,
                        extra={"connection_id": conn.connection_id})
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
        phase_ms = _phase_ms(conn.connection_id, interval_ms)
        while True:
            slot = _next_slot(_now_ms(), interval_ms, phase_ms)
            await asyncio.sleep(max(0.0, (slot - _now_ms()) / 1000))
            try:
                self._publish([], [self._failure(d, slot, conn, kind, r) for d, r in reasons.items()], [], conn,
                              slot, started=None)
            except Exception as err:  # reporting must never end this connection's task (nor the shard)
                log.warning("%s: could not publish the %s failures: %s", conn.connection_id, kind, err,
                            extra={"connection_id": conn.connection_id})
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
        self._publish(batches, failures, dead, conn, slot, started)
        return healthy

    def _publish(self, batches: list[ReadingBatch], failures: list[PollFailure], dead: list[tuple[str, bytes, str]],
                 conn: ModbusConnection, slot: int, started: float | None) -> None:
        """Put one poll cycle's records into the outbox; the sender delivers them. `started`: when the
        poll began, or None when nothing was polled (a slot that passed whole, a device the configuration
        cannot poll): such records say why a slot has no reading, and are no sample of the poll's latency."""
        parts = self._settings.kafka_partitions
        out: list[OutRecord] = [
            (self._raw_topic, topics.partition_for(b.device_id, parts), b.device_id.encode(), codec.encode(b))
            for b in batches]
        out += [(self._raw_topic, topics.partition_for(f.device_id, parts), f.device_id.encode(), codec.encode(f))
                for f in failures]
        out += [(self._dlq_topic, topics.partition_for(d, parts), d.encode(),
                 codec.encode_dead_letter(reason, raw, stage="modbus-shard", device_id=d,
                                          connection=conn.connection_id))
                for d, raw, reason in dead]
        n_readings = sum(len(b.values) for b in batches)
        polled = len(conn.devices) if started is not None else 0
        entry = Entry(conn.connection_id, slot, time.perf_counter() if started is None else started, polled,
                      n_readings, out)
        dropped = self.outbox.put(entry)
        self._outbox_ready.set()
        if dropped.entries:
            self._overflowed(dropped)
        self.stats.polls_ok += len(batches)
        self.stats.polls_failed += sum(1 for f in failures if f.kind is not FailureKind.SKIPPED)
        self.stats.readings += n_readings
        self.stats.dead_letters += len(dead)
        metrics.count(metrics.polls(), len(batches), protocol="modbus", outcome="ok")
        metrics.count(metrics.polls(), len(failures), protocol="modbus", outcome="failed")
        metrics.count(metrics.readings(), n_readings, stage="modbus-shard")
        metrics.count(metrics.ingested_readings(), n_readings, protocol="modbus")
        metrics.count(metrics.dead_letters(), len(dead), stage="modbus-shard")

    def _overflowed(self, dropped: Dropped) -> None:
        self.stats.buffer_dropped_polls += dropped.entries
        self.stats.buffer_dropped_records += dropped.records
        self.stats.buffer_dropped_readings += dropped.readings
        metrics.count(metrics.shard_buffer_dropped(), dropped.records, protocol="modbus")
        d = self._dropped_since_log
        self._dropped_since_log = Dropped(d.entries + dropped.entries, d.records + dropped.records,
                                          d.readings + dropped.readings)
        now = time.monotonic()
        if now - self._last_overflow_log >= OVERFLOW_LOG_EVERY_S:
            d, self._dropped_since_log, self._last_overflow_log = self._dropped_since_log, Dropped(), now
            log.warning("outbox full (%g MB, %d records waiting for Kafka): dropped the oldest %d poll cycles "
                        "(%d records, %d readings); METERRAY_SHARD_BUFFER_MB sets the size",
                        self.outbox.max_bytes / 2**20, self.outbox.records, d.entries, d.records, d.readings)

    async def _send_loop(self) -> None:
        """Drain the outbox to Kafka, one batch at a time; keep what Kafka did not acknowledge."""
        backoff = Backoff(base_s=0.2, cap_s=5.0)
        while True:
            batch = self.outbox.take(SEND_BATCH_RECORDS)
            if not batch:
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
                continue
            records = [r for e in batch for r in e.records]
            errors = await self._producer.deliver(records)
            retry: list[list[int]] = []
            refused: list[list[int]] = []
            i = 0
            for entry in batch:
                outcome = errors[i:i + len(entry.records)]
                i += len(entry.records)
                retry.append([j for j, e in enumerate(outcome) if e is not None and not is_permanent(e)])
                refused.append([j for j, e in enumerate(outcome) if e is not None and is_permanent(e)])
            settled = self.outbox.settle(retry, refused)
            self._delivered(settled.done, len(records) - settled.retried - settled.refused)
            if settled.refused:
                self.stats.refused += settled.refused
                first = next(e for e in errors if e is not None and is_permanent(e))
                log.error("Kafka refused %d records for good (%s); they are not retried", settled.refused, first)
            if settled.retried:
                self.stats.delivery_failures += 1
                self.stats.redelivered += settled.retried
                first = next(e for e in errors if e is not None and not is_permanent(e))
                delay = backoff.next_delay()
                log.warning("Kafka did not take %d of %d records (%s); %d records wait in the outbox, retrying in "
                            "%.1fs", settled.retried, len(records), first, self.outbox.records, delay)
                await asyncio.sleep(delay)
            else:
                backoff.reset()

    def _delivered(self, entries: list[Entry], records: int) -> None:
        self.stats.delivered += records
        now = time.perf_counter()
        hist = metrics.poll_latency_ms()
        for e in entries:
            if not e.devices:  # nothing was polled: no latency to report
                continue
            # Every device's data waited for the whole cycle: poll start to Kafka acknowledgement.
            elapsed_ms = (now - e.started) * 1000
            self.stats.latencies_ms.extend([elapsed_ms] * e.devices)
            hist.observe(elapsed_ms, tags={"protocol": "modbus"})

    @staticmethod
    def _failure(device_id: str, slot: int, conn: ModbusConnection, kind: FailureKind, detail: str) -> PollFailure:
        return PollFailure(device_id, slot, f"modbus://{conn.host}:{conn.port}", kind, detail)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _phase_ms(connection_id: str, interval_ms: int) -> int:
    """Where a connection's slots sit in its interval: stable per connection, spread over all of them."""
    return zlib.crc32(connection_id.encode()) % interval_ms


def _next_slot(after_ms: float, interval_ms: int, phase_ms: int) -> int:
    """The first slot (phase + k·interval) at or after `after_ms`."""
    k = -(-(int(after_ms) - phase_ms) // interval_ms)
    return phase_ms + k * interval_ms


@ray.remote(num_cpus=0, max_restarts=0)
class ModbusShard:
    """Ray actor around ModbusShardCore; the supervisor recreates it (same assignment) when it dies."""

    def __init__(self, settings: Settings, name: str) -> None:
        setup_logging(settings.log_level, name)
        self._name = name
        self._producer = AsyncProducer(settings.kafka_bootstrap, **SHARD_PRODUCER_CONFIG)
        self._core = ModbusShardCore(settings, self._producer)

    async def assign(self, connections: list[ModbusConnection]) -> dict[str, int]:
        await self._producer.start()
        return await self._core.assign(connections)

    async def ping(self) -> dict[str, object]:
        # The supervisor pings every second: often enough for a gauge, and no cost per poll.
        metrics.shard_buffered_records().set(self._core.outbox.records, tags={"shard": self._name})
        return {"role": "modbus-shard", "name": self._name, "pid": os.getpid(),
                "node_id": ray.get_runtime_context().get_node_id(),
                "connections": self._core.connection_ids(), **self._core.stats.summary(),
                **self._core.buffer_summary()}

    async def reset_stats(self) -> None:
        self._core.stats = PollStats()

    async def stop(self) -> None:
        await self._core.stop()
        await self._producer.close()
