"""The consuming stages through sink outages longer than `max.poll.interval.ms` (set to 10 s here):
the stage keeps its group membership, loses and doubles nothing, and never commits a partition
that was revoked while it waited. Real failures: PostgreSQL cut off by a TCP proxy the test breaks,
and a lock the test holds on the archive in this module's own database."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from confluent_kafka import Consumer, TopicPartition

from actors.pg_writer import GROUP_ID, PgWriterCore
from meterray.domain import ReadingBatch, Value
from meterray.settings import Settings
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer
from tests.actors.conftest import TcpProxy, register, until
from tests.pipeline.helpers import read_topic

POLL_LIMITS = {"max.poll.interval.ms": 10_000, "session.timeout.ms": 6_000}
OUTAGE_S = 25.0  # longer than max.poll.interval.ms


def _devices(prefix: str) -> list[str]:
    return [f"{prefix}-{i}" for i in range(8)]  # spread over every partition


@asynccontextmanager
async def _writer(s: Settings, dsn: str, member: str) -> AsyncIterator[PgWriterCore]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    producer = AsyncProducer(s.kafka_bootstrap)
    core = PgWriterCore(s, pool, producer, member, consumer_config=POLL_LIMITS)
    await core.start()
    try:
        yield core
    finally:
        await core.stop()
        await producer.close()
        await pool.close()


class Feed:
    """Readings for every device, one batch each per 200 ms, straight into `readings`; remembers
    every (device, ts) it got Kafka to acknowledge."""

    def __init__(self, s: Settings, devices: list[str]) -> None:
        self._s = s
        self.devices = devices
        self.sent: set[tuple[str, int]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def _run(self) -> None:
        s, t = self._s, int(time.time() * 1000) // 1000 * 1000
        async with AsyncProducer(s.kafka_bootstrap) as p:
            while not self._stopping:  # never cancelled mid-send: `sent` is exactly what Kafka holds
                t += 200
                batch = [(d, t) for d in self.devices]
                await p.send_many((s.topic(topics.READINGS), topics.partition_for(d, s.kafka_partitions), d.encode(),
                                   codec.encode(ReadingBatch(d, ts, "test", (Value("1-0:1.8.0", ts / 1e6, "kWh", 0),))))
                                  for d, ts in batch)
                self.sent.update(batch)
                await asyncio.sleep(0.2)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stopping = True
        assert self._task is not None
        await self._task


async def _stored(dsn: str, devices: list[str]) -> list[tuple[str, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT device_id, (extract(epoch FROM ts) * 1000)::bigint AS ms"
                                " FROM monitoring.readings WHERE device_id = ANY($1::text[])", devices)
        return [(r["device_id"], r["ms"]) for r in rows]
    finally:
        await conn.close()


def _lag(s: Settings) -> dict[int, int]:
    """Per partition of `readings`: end offset minus the writer group's committed offset."""
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": s.topic(GROUP_ID)})
    try:
        tps = [TopicPartition(s.topic(topics.READINGS), p) for p in range(s.kafka_partitions)]
        committed = {tp.partition: tp.offset for tp in c.committed(tps, timeout=10)}
        return {p: c.get_watermark_offsets(TopicPartition(s.topic(topics.READINGS), p), timeout=10)[1]
                - committed[p] for p in committed}
    finally:
        c.close()


async def _all_stored_and_committed(s: Settings, feed: Feed) -> None:
    async def done() -> bool:
        stored = await _stored(s.pg_dsn, feed.devices)
        return set(stored) >= feed.sent and not any(_lag(s).values())

    try:
        await until(done, 60, "every reading stored and committed", every_s=0.3)
    except AssertionError:
        missing = feed.sent - set(await _stored(s.pg_dsn, feed.devices))
        raise AssertionError(f"{len(missing)} readings missing; committed offsets behind the end: {_lag(s)}") from None
    stored = await _stored(s.pg_dsn, feed.devices)
    assert len(stored) == len(set(stored)) == len(feed.sent) and set(stored) == feed.sent
    assert _lag(s) == {p: 0 for p in range(s.kafka_partitions)}, "a partition's committed offset is behind"


async def test_writer_keeps_its_membership_through_a_long_postgres_outage_and_a_rebalance(
        own: Settings, pg_proxy: TcpProxy) -> None:
    s = own
    feed = Feed(s, _devices(uuid.uuid4().hex[:6]))
    await register(s.pg_dsn, *feed.devices)
    feed.start()
    try:
        async with _writer(s, pg_proxy.dsn(s.pg_dsn), f"a-{uuid.uuid4().hex[:6]}") as a:
            async def a_writes() -> bool:
                return bool(await _stored(s.pg_dsn, feed.devices)) and (await a.ping())["messages"] > 0

            await until(a_writes, 60, "the writer to store readings", every_s=0.3)
            member, before = a._consumer.member_id(), (await a.ping())["rebalances"]

            await pg_proxy.cut()
            cut_at = time.monotonic()

            async def a_paused() -> bool:
                p = await a.ping()
                return bool(p["paused"] and p["sink_failures"] >= 1)

            await until(a_paused, 20, "the writer to notice and pause", every_s=0.3)
            await asyncio.sleep(max(0.0, cut_at + 15 - time.monotonic()))  # 15 s > max.poll.interval
            status = await a.ping()
            assert status["rebalances"] == before and a._consumer.member_id() == member, (
                "the writer left its group during the outage", status)
            assert "Connection" in status["last_error"] or "connect" in status["last_error"].lower(), status

            # A second writer joins while the first still waits: the group rebalances under it.
            async with _writer(s, s.pg_dsn, f"b-{uuid.uuid4().hex[:6]}") as b:
                async def b_took_over_some() -> bool:
                    return (await b.ping())["messages"] > 0 and (await a.ping())["rebalances"] > before

                await until(b_took_over_some, 30, "the second writer to take partitions over", every_s=0.3)
                # The feed ends before the first writer comes back, so nothing newer hides a commit
                # that moves a revoked partition's offset back.
                await feed.stop()
                await asyncio.sleep(max(0.0, cut_at + OUTAGE_S - time.monotonic()))
                await pg_proxy.mend()
                await until(lambda: _resumed(a), 60, "the first writer to resume", every_s=0.3)
                await _all_stored_and_committed(s, feed)
                assert (await b.ping())["sink_failures"] == 0
    finally:
        await feed.stop()


async def _resumed(core: PgWriterCore) -> bool:
    p = await core.ping()
    return not p["paused"] and p["outage_s"] is None


async def test_a_write_blocked_by_a_lock_longer_than_max_poll_interval_keeps_the_membership(own: Settings) -> None:
    s = own
    feed = Feed(s, _devices(uuid.uuid4().hex[:6]))
    await register(s.pg_dsn, *feed.devices)
    feed.start()
    locker = await asyncpg.connect(s.pg_dsn)
    try:
        async with _writer(s, s.pg_dsn, f"lock-{uuid.uuid4().hex[:6]}") as w:
            async def writes() -> bool:
                return (await w.ping())["messages"] > 0

            await until(writes, 60, "the writer to store readings", every_s=0.3)
            member, before = w._consumer.member_id(), (await w.ping())["rebalances"]
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE monitoring.readings IN ACCESS EXCLUSIVE MODE")
            locked_at = time.monotonic()

            async def hanging() -> bool:
                return bool((await w.ping())["paused"])

            await until(hanging, 20, "the blocked writer to pause and keep polling", every_s=0.3)
            await asyncio.sleep(max(0.0, locked_at + 20 - time.monotonic()))  # 20 s > max.poll.interval
            status = await w.ping()
            assert status["rebalances"] == before and w._consumer.member_id() == member, status
            await tx.rollback()
            await until(lambda: _resumed(w), 60, "the writer to resume", every_s=0.3)
            await feed.stop()
            await _all_stored_and_committed(s, feed)
            assert (await w.ping())["rebalances"] == before
    finally:
        await feed.stop()
        await locker.close()


async def test_records_postgres_refuses_as_data_are_dead_lettered_alone_and_the_rest_is_stored(own: Settings) -> None:
    """Records the codec accepts but PostgreSQL refuses (a check constraint the test adds to its own
    archive): the writer splits the batch, dead-letters exactly those with PostgreSQL's reason,
    stores every other reading, commits and goes on."""
    s = own
    feed = Feed(s, _devices(uuid.uuid4().hex[:6]))
    await register(s.pg_dsn, *feed.devices)
    conn = await asyncpg.connect(s.pg_dsn)
    await conn.execute("ALTER TABLE monitoring.readings ADD CONSTRAINT test_no_666 CHECK (value <> -666)")
    try:
        t0 = int(time.time() * 1000) // 1000 * 1000
        good = [(d, t0 + k * 1000) for k in range(50) for d in feed.devices]
        poison = [(feed.devices[1], t0 + 7 * 1000 + 1), (feed.devices[5], t0 + 31 * 1000 + 1)]
        out = [(d, ts, ts / 1e6) for d, ts in good] + [(d, ts, -666.0) for d, ts in poison]
        out.sort(key=lambda r: r[1])
        async with AsyncProducer(s.kafka_bootstrap) as p:
            await p.send_many((s.topic(topics.READINGS), topics.partition_for(d, s.kafka_partitions), d.encode(),
                               codec.encode(ReadingBatch(d, ts, "test", (Value("1-0:1.8.0", v, "kWh", 0),))))
                              for d, ts, v in out)
        feed.sent = set(good)
        async with _writer(s, s.pg_dsn, f"data-{uuid.uuid4().hex[:6]}") as w:
            await _all_stored_and_committed(s, feed)
            status = await w.ping()
        dead = [codec.decode_dead_letter(v) for _, v in read_topic(s.kafka_bootstrap, s.topic(topics.READINGS_DLQ))]
        assert sorted((d["raw"], d["stage"]) for d in dead) == sorted(
            (codec.encode(ReadingBatch(dev, ts, "test", (Value("1-0:1.8.0", -666.0, "kWh", 0),))), "pg-writer")
            for dev, ts in poison)
        for d in dead:
            assert d["reason"].startswith("refused by the sink: CheckViolationError") and "test_no_666" in d["reason"]
        assert status["splits"] > 0 and status["dead_letters"] == 2 and status["sink_failures"] == 0, status
    finally:
        await conn.execute("ALTER TABLE monitoring.readings DROP CONSTRAINT test_no_666")
        await conn.close()
