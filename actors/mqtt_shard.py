"""MqttShard: one MQTT subscriber session of one MQTT connection (one of its `subscribers`).

Messages arrive on paho's network thread and are queued; one task here takes whatever is waiting
as a batch: decodes it (protocols/mqtt/codecs.py), registers the devices it sees for the first time
(connections with auto_register) or dead-letters their messages (the others), produces the readings
to `readings.raw` and undecodable messages to `readings.dlq` with their reason, and acknowledges
each message to the broker only once Kafka confirmed every record made from it (DESIGN.md).

Several batches may wait for Kafka at once (the next one is decoded while the previous is in
flight); acknowledgements go out in the order messages arrived (MQTT 5.0 §4.6). Nothing is held
here beyond the broker's in-flight window (Receive Maximum, ~100 messages): while Kafka is away, the
window fills, the broker stops sending and keeps the rest in the session. A record Kafka did not
take is produced again (with backoff) before its message is acknowledged; a shard that dies loses
only acknowledgements, and the broker re-sends those messages to its replacement (same client id).
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections import deque
from dataclasses import dataclass

import asyncpg
import ray

from actors import metrics
from actors.heap import freeze_startup_heap
from actors.known_devices import KnownDevices
from actors.logs import setup_logging
from meterray.backoff import Backoff
from meterray.domain import ReadingBatch
from meterray.mqtt_config import MqttConnection
from meterray.settings import Settings
from protocols.mqtt.client import InMessage, SessionSpec, Subscriber
from protocols.mqtt.codecs import DecodeError, Decoder, decoder_for
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer, OutMessage, is_permanent
from storage.postgres.mqtt import register_mqtt_devices

log = logging.getLogger(__name__)

MAX_BATCH_MESSAGES = 2000
METRICS_EVERY_S = 1.0  # Prometheus scrapes every 10-15 s: a second's delay in a counter is not seen
MAX_PENDING_BATCHES = 8  # batches waiting for Kafka at once; the in-flight window bounds them anyway
SHARD_PRODUCER_CONFIG: dict[str, object] = {"message.timeout.ms": 30_000, "linger.ms": 2,
                                            "reconnect.backoff.ms": 100, "reconnect.backoff.max.ms": 1000}


def share_group(namespace: str, conn: MqttConnection) -> str:
    """The group the connection names, else the connection's own within this runtime: a stopped runtime's
    persistent sessions (another test run, a demo beside a run, on one broker) stay subscribed in their
    group, and a group shared with them would hand them their turn of the messages."""
    if conn.share_group:
        return conn.share_group
    return re.sub(r"[^A-Za-z0-9._:@-]", "_", f"{namespace}.{conn.group}")[:120]


def client_id(namespace: str, conn: MqttConnection, index: int) -> str:
    """Stable for a connection's subscriber: a replacement shard resumes the same broker session.
    The Ray namespace keeps two runtimes (two test runs) on one broker apart."""
    return f"{namespace}.{conn.connection_id}.{index}"[:200]


class MqttStats:
    def __init__(self) -> None:
        self.messages = 0  # received
        self.redelivered = 0  # received with the DUP flag (the broker sent them before)
        self.readings = 0  # values produced to readings.raw
        self.batches = 0  # device batches produced
        self.dead_letters = 0
        self.registered = 0  # devices registered automatically
        self.acked = 0
        self.ack_skipped = 0  # acknowledgements of an earlier connection (the broker re-sends those)
        self.delivery_failures = 0
        self.refused = 0
        self.latencies_ms: deque[float] = deque(maxlen=50_000)  # receive → Kafka confirmed

    def summary(self) -> dict[str, object]:
        lat = sorted(self.latencies_ms)
        pick = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2)) if lat else (lambda q: None)
        return {"messages": self.messages, "redelivered": self.redelivered, "readings": self.readings,
                "batches": self.batches, "dead_letters": self.dead_letters, "registered": self.registered,
                "acked": self.acked, "ack_skipped": self.ack_skipped, "delivery_failures": self.delivery_failures,
                "refused": self.refused, "p50_ms": pick(0.5), "p99_ms": pick(0.99)}


@dataclass(slots=True)
class _Batch:
    messages: list[InMessage]
    done: asyncio.Future[None]


class MqttShardCore:
    def __init__(self, settings: Settings, producer: AsyncProducer) -> None:
        self._settings = settings
        self._producer = producer
        self._raw_topic = settings.topic(topics.READINGS_RAW)
        self._dlq_topic = settings.topic(topics.READINGS_DLQ)
        self._parts = settings.kafka_partitions
        self.stats = MqttStats()
        self.conn: MqttConnection | None = None
        self.index = 0
        self._subscriber: Subscriber | None = None
        self._inbox: deque[InMessage] = deque()
        self._wake = asyncio.Event()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: asyncpg.Pool | None = None
        self._known: KnownDevices | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._delivering: set[asyncio.Task[None]] = set()
        self._decode: Decoder | None = None
        self._acks: asyncio.Queue[_Batch] = asyncio.Queue(MAX_PENDING_BATCHES)
        # Counted here, handed to Ray's metrics at most once per METRICS_EVERY_S: at a few thousand
        # messages/s a batch is a handful of messages, and three metric updates per batch cost more
        # than decoding them.
        self._unmetered_readings = 0
        self._unmetered_dead = 0
        self._metered_at = time.monotonic()

    def _meter(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._metered_at < METRICS_EVERY_S:
            return
        self._metered_at = time.monotonic()
        metrics.count(metrics.readings(), self._unmetered_readings, stage="mqtt-shard")
        metrics.count(metrics.ingested_readings(), self._unmetered_readings, protocol="mqtt")
        metrics.count(metrics.dead_letters(), self._unmetered_dead, stage="mqtt-shard")
        self._unmetered_readings = self._unmetered_dead = 0

    async def configure(self, conn: MqttConnection, index: int) -> dict[str, object]:
        """Run this subscriber of `conn`; a changed configuration reconnects, an unchanged one does nothing."""
        if (conn, index) == (self.conn, self.index) and self._subscriber is not None:
            return {"changed": False}
        await self._close_session(forget=False)
        self.conn, self.index = conn, index
        self._loop = asyncio.get_running_loop()
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._take_loop(), name="mqtt-take"),
                           asyncio.create_task(self._ack_loop(), name="mqtt-ack")]
        self._decode = decoder_for(conn)
        spec = SessionSpec(conn.host, conn.port, client_id(self._settings.ray_namespace, conn, index),
                           conn.topic_filter, share_group(self._settings.ray_namespace, conn), conn.inflight,
                           conn.session_expiry_s)
        self._subscriber = Subscriber(spec, self._received)
        self._subscriber.start()
        return {"changed": True, "client_id": spec.client_id, "subscription": spec.subscription}

    def _received(self, m: InMessage) -> None:
        """paho's thread: queue the message and wake the event loop once per burst (a wake-up is a
        write to the loop's self-pipe: once per message would cost more than the message)."""
        self._inbox.append(m)
        if not self._wake_pending and self._loop is not None:
            self._wake_pending = True
            self._loop.call_soon_threadsafe(self._wake.set)

    def health(self) -> dict[str, object]:
        self._meter()  # the supervisor pings every few seconds: counts of a shard gone quiet get out too
        for t in self._tasks:
            if t.done() and not t.cancelled():
                raise RuntimeError(f"{t.get_name()} died: {t.exception()!r}")
        s = self._subscriber
        return {"connection": self.conn.connection_id if self.conn else None, "index": self.index,
                "client_id": s.spec.client_id if s else None, "connected": bool(s and s.connected),
                "subscribed": bool(s and s.subscribed.is_set()), "connects": s.connects if s else 0,
                "last_error": s.last_error if s else "", "waiting": len(self._inbox)}

    async def _take_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._wake_pending = False  # before taking: a message queued from now on wakes us again
            while self._inbox:
                n = min(len(self._inbox), MAX_BATCH_MESSAGES)
                batch = _Batch([self._inbox.popleft() for _ in range(n)], asyncio.get_running_loop().create_future())
                await self._acks.put(batch)  # waits while MAX_PENDING_BATCHES are with Kafka
                task = asyncio.create_task(self._deliver(batch))
                self._delivering.add(task)
                task.add_done_callback(self._delivering.discard)

    async def _ack_loop(self) -> None:
        """Acknowledge batches in arrival order, each once Kafka confirmed all of it."""
        while True:
            batch = await self._acks.get()
            await batch.done
            sub = self._subscriber
            now = time.time()
            acked, skipped = sub.ack_many(batch.messages) if sub is not None else (0, len(batch.messages))
            self.stats.acked += acked
            self.stats.ack_skipped += skipped
            self.stats.latencies_ms.extend((now - m.received) * 1000 for m in batch.messages)

    async def _deliver(self, batch: _Batch) -> None:
        try:
            records, n_readings = await self._records(batch.messages)
            await self._produce(records)
            self.stats.readings += n_readings
            self._unmetered_readings += n_readings
            self._meter()
            batch.done.set_result(None)
        except Exception as err:  # never expected (every failure above is retried): end the shard loudly
            log.exception("MQTT batch failed")
            batch.done.set_exception(err)
            raise

    async def _records(self, messages: list[InMessage]) -> tuple[list[OutMessage], int]:
        assert self.conn is not None and self._decode is not None
        now_ms = int(time.time() * 1000)
        decoded: list[tuple[InMessage, list[ReadingBatch]]] = []
        dead: list[tuple[InMessage, str]] = []
        self.stats.messages += len(messages)
        for m in messages:
            self.stats.redelivered += m.dup
            try:
                decoded.append((m, self._decode(m.topic, m.payload, now_ms)))
            except DecodeError as err:
                dead.append((m, str(err)))
        unknown = await self._unknown({b.device_id for _, bs in decoded for b in bs})
        if unknown:
            keep = []
            for m, bs in decoded:
                missing = sorted({b.device_id for b in bs} & unknown)
                if missing:
                    dead.append((m, f"unknown device(s) {missing[:10]}: not registered, and MQTT connection "
                                    f"{self.conn.connection_id!r} does not register devices automatically"))
                    bs = [b for b in bs if b.device_id not in unknown]
                if bs:
                    keep.append((m, bs))
            decoded = keep
        out: list[OutMessage] = []
        n_readings = 0
        raw, parts = self._raw_topic, self._parts
        for _, bs in decoded:
            for b in bs:
                out.append((raw, topics.partition_for(b.device_id, parts), b.device_id.encode(), codec.encode(b)))
                n_readings += len(b.values)
        self.stats.batches += len(out)
        for m, reason in dead:
            out.append((self._dlq_topic, topics.partition_for(m.topic, parts), m.topic.encode()[:1024],
                        codec.encode_dead_letter(reason, m.payload, stage="mqtt-shard", topic=m.topic,
                                                 connection=self.conn.connection_id)))
        self.stats.dead_letters += len(dead)
        self._unmetered_dead += len(dead)
        return out, n_readings

    async def _unknown(self, device_ids: set[str]) -> set[str]:
        """Devices not registered; with auto_register they are registered now (idempotent) and none is."""
        assert self.conn is not None
        backoff = Backoff(base_s=0.2, cap_s=5.0)
        while True:
            try:
                if self._pool is None:  # made here, not when configured: PostgreSQL may be away at start
                    self._pool = await asyncpg.create_pool(self._settings.pg_dsn, min_size=1, max_size=2)
                    self._known = KnownDevices(self._pool)
                assert self._known is not None
                unknown = await self._known.unknown(device_ids)
                if not unknown or not self.conn.auto_register:
                    return unknown
                added = await register_mqtt_devices(self._pool, unknown)
                self._known.remember(unknown)
                self.stats.registered += len(added)
                if added:
                    log.info("registered %d new MQTT device(s), e.g. %s", len(added), sorted(added)[:5])
                return set()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                # PostgreSQL away: the messages stay unacknowledged (the broker holds the rest) until it is back.
                delay = backoff.next_delay()
                log.warning("device registry unavailable (%s); retrying in %.1fs", err, delay)
                await asyncio.sleep(delay)

    async def _produce(self, records: list[OutMessage]) -> None:
        """Return once Kafka confirmed every record (re-producing what it did not take)."""
        backoff = Backoff(base_s=0.2, cap_s=5.0)
        while records:
            errors = await self._producer.deliver(records)
            retry = [r for r, e in zip(records, errors, strict=True) if e is not None and not is_permanent(e)]
            refused = [e for e in errors if e is not None and is_permanent(e)]
            if refused:
                self.stats.refused += len(refused)
                log.error("Kafka refused %d records for good (%s); their messages are acknowledged, not retried",
                          len(refused), refused[0])
            if retry:
                self.stats.delivery_failures += 1
                delay = backoff.next_delay()
                log.warning("Kafka did not take %d of %d records (%s); retrying in %.1fs", len(retry), len(records),
                            next(e for e in errors if e is not None), delay)
                await asyncio.sleep(delay)
            records = retry

    async def _close_session(self, forget: bool) -> None:
        if self._subscriber is not None:
            sub, self._subscriber = self._subscriber, None
            await asyncio.to_thread(sub.stop, forget)
            self._inbox.clear()  # unacknowledged: the broker sends them again to the next session

    async def stop(self, forget_session: bool = False, drain_timeout_s: float = 10.0) -> None:
        """Stop: what was received is delivered and acknowledged (for up to `drain_timeout_s`), then the
        session is closed. `forget_session` (the connection was removed, or has fewer subscribers now)
        first unsubscribes, so the broker routes nothing new here, and then ends the session; otherwise
        (a runtime shutdown) the broker keeps the session and queues for it until a shard resumes it."""
        if forget_session and self._subscriber is not None:
            await asyncio.to_thread(self._subscriber.unsubscribe)
        deadline = time.monotonic() + drain_timeout_s
        while (self._inbox or not self._acks.empty() or self._delivering) and time.monotonic() < deadline:
            if not forget_session:
                self._inbox.clear()  # not taken yet: the broker re-sends these to the resumed session
            await asyncio.sleep(0.05)
        for t in [*self._tasks, *self._delivering]:  # what Kafka has not confirmed by now stays unacknowledged
            t.cancel()
        await asyncio.gather(*self._tasks, *self._delivering, return_exceptions=True)
        self._tasks = []
        self._meter(force=True)
        await self._close_session(forget_session)
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


@ray.remote(num_cpus=0, max_restarts=0)
class MqttShard:
    """Ray actor around MqttShardCore; the supervisor recreates it (same client id) when it dies."""

    def __init__(self, settings: Settings, name: str) -> None:
        setup_logging(settings.log_level, name)
        self._name = name
        self._producer = AsyncProducer(settings.kafka_bootstrap, **SHARD_PRODUCER_CONFIG)
        self._core = MqttShardCore(settings, self._producer)
        freeze_startup_heap()

    async def configure(self, conn: MqttConnection, index: int) -> dict[str, object]:
        await self._producer.start()
        return await self._core.configure(conn, index)

    async def ping(self) -> dict[str, object]:
        return {"role": "mqtt-shard", "name": self._name, "pid": os.getpid(), **self._core.health(),
                **self._core.stats.summary()}

    async def reset_stats(self) -> None:
        self._core.stats = MqttStats()

    async def stop(self, forget_session: bool = False) -> None:
        await self._core.stop(forget_session)
        await self._producer.close()
