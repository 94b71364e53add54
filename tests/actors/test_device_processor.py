"""The device processor's loop on the real Kafka and PostgreSQL, without Ray around it."""
from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from actors.device_processor import DeviceProcessorCore
from meterray.domain import DeviceStatus, FailureKind, PollFailure, ReadingBatch, Value
from meterray.settings import Settings
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer
from storage.postgres import devices as device_repo
from tests.pipeline.helpers import read_topic


@pytest.fixture
def own_topics(stores: Settings) -> Settings:
    s = stores.model_copy(update={"kafka_topic_prefix": f"{stores.kafka_topic_prefix}proc-{time.monotonic_ns()}."})
    topics.ensure_topics(s)
    return s


async def _run_core_until(s: Settings, done, messages: int, timeout_s: float = 60) -> dict:
    """Run a processor until `done(pool)` holds and it has committed `messages` messages."""
    pool = await asyncpg.create_pool(s.pg_dsn, min_size=1, max_size=2)
    producer = AsyncProducer(s.kafka_bootstrap)
    core = DeviceProcessorCore(s, pool, producer, "test-processor")
    await core.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not (await done(pool) and (await core.ping())["messages"] >= messages):
            assert time.monotonic() < deadline, f"processor did not get there: {await core.ping()}"
            await asyncio.sleep(0.3)
        return await core.ping()
    finally:
        await core.stop()
        await producer.close()
        await pool.close()


async def test_failures_only_batch_updates_state_publishes_events_and_dead_letters_garbage(
        own_topics: Settings) -> None:
    s = own_topics
    now = int(time.time() * 1000)
    raw = s.topic(topics.READINGS_RAW)
    msgs = [(raw, topics.partition_for("proc-a", s.kafka_partitions), b"proc-a",
             codec.encode(PollFailure("proc-a", now + i * 1000, "test", FailureKind.CONNECTION_REFUSED, "refused")))
            for i in range(3)]
    msgs.append((raw, 0, b"junk", b"\x00 definitely not json"))
    async with AsyncProducer(s.kafka_bootstrap) as p:
        await p.send_many(msgs)

    async def offline(pool: asyncpg.Pool) -> bool:
        st = (await device_repo.load_states(pool, ["proc-a"])).get("proc-a")
        return st is not None and st.status == DeviceStatus.OFFLINE and st.consecutive_failures == 3

    stats = await _run_core_until(s, offline, 4)
    assert stats["messages"] == 4 and stats["sink_failures"] == 0, stats

    events = [codec.decode_event(v) for _, v in read_topic(s.kafka_bootstrap, s.topic(topics.DEVICE_EVENTS))]
    assert [(e.previous, e.status) for e in events] == [
        (DeviceStatus.UNKNOWN, DeviceStatus.DEGRADED), (DeviceStatus.DEGRADED, DeviceStatus.OFFLINE)]
    assert "connection_refused" in events[-1].reason
    dead = [codec.decode_dead_letter(v) for _, v in read_topic(s.kafka_bootstrap, s.topic(topics.READINGS_DLQ))]
    assert len(dead) == 1 and dead[0]["raw"] == b"\x00 definitely not json" and "JSONDecodeError" in dead[0]["reason"]
    assert read_topic(s.kafka_bootstrap, s.topic(topics.READINGS)) == []

    # Offsets were committed after the checkpoint: a new processor in the group starts after them.
    async with AsyncProducer(s.kafka_bootstrap) as p:
        await p.send_many([(raw, 1, b"proc-b", codec.encode(
            ReadingBatch("proc-b", now, "test", (Value("1-0:1.8.0", 5.0, "kWh"),))))])

    async def b_seen(pool: asyncpg.Pool) -> bool:
        return "proc-b" in await device_repo.load_states(pool, ["proc-b"])

    stats = await _run_core_until(s, b_seen, 1)
    assert stats["messages"] == 1, stats
    out = [codec.decode(v) for _, v in read_topic(s.kafka_bootstrap, s.topic(topics.READINGS))]
    assert out == [ReadingBatch("proc-b", now, "test", (Value("1-0:1.8.0", 5.0, "kWh"),))]
