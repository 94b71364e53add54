"""The device processor's loop on the real Kafka and PostgreSQL, without Ray around it."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg

from actors.device_processor import DeviceProcessorCore
from meterray.domain import DeviceStatus, FailureKind, PollFailure, ReadingBatch, Value
from meterray.settings import Settings
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer
from storage.postgres import devices as device_repo
from tests.actors.conftest import register
from tests.pipeline.helpers import read_topic

ENERGY = "1-0:1.8.0"
Done = Callable[[asyncpg.Pool], Awaitable[bool]]


async def _run_core_until(s: Settings, done: Done, messages: int, timeout_s: float = 60,
                          member: str = "test-processor") -> dict:
    """Run a processor until `done(pool)` holds and it has committed `messages` messages."""
    pool = await asyncpg.create_pool(s.pg_dsn, min_size=1, max_size=2)
    producer = AsyncProducer(s.kafka_bootstrap)
    core = DeviceProcessorCore(s, pool, producer, member)
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


async def _produce(s: Settings, items: list[ReadingBatch | PollFailure]) -> None:
    raw = s.topic(topics.READINGS_RAW)
    async with AsyncProducer(s.kafka_bootstrap) as p:
        await p.send_many((raw, topics.partition_for(i.device_id, s.kafka_partitions), i.device_id.encode(),
                           codec.encode(i)) for i in items)


def _reading(device_id: str, ts: int, energy: float) -> ReadingBatch:
    return ReadingBatch(device_id, ts, "test", (Value(ENERGY, energy, "kWh", 0),))


def _failure(device_id: str, ts: int) -> PollFailure:
    return PollFailure(device_id, ts, "test", FailureKind.CONNECTION_REFUSED, "refused")


async def test_failures_only_batch_updates_state_publishes_events_and_dead_letters_garbage(own: Settings) -> None:
    s = own
    await register(s.pg_dsn, "proc-a", "proc-b")
    now = int(time.time() * 1000)
    # Three failed polls 10 s apart (the device polls every 5 s: offline after 15 s and two failed cycles).
    await _produce(s, [_failure("proc-a", now + i * 10_000) for i in range(3)])
    async with AsyncProducer(s.kafka_bootstrap) as p:
        await p.send_many([(s.topic(topics.READINGS_RAW), 0, b"junk", b"\x00 definitely not json")])

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
    assert len(dead) == 1 and dead[0]["raw"] == b"\x00 definitely not json" and "not valid JSON" in dead[0]["reason"]
    assert read_topic(s.kafka_bootstrap, s.topic(topics.READINGS)) == []

    # Offsets were committed after the checkpoint: a new processor in the group starts after them.
    await _produce(s, [_reading("proc-b", now, 5.0)])

    async def b_seen(pool: asyncpg.Pool) -> bool:
        return "proc-b" in await device_repo.load_states(pool, ["proc-b"])

    stats = await _run_core_until(s, b_seen, 1)
    assert stats["messages"] == 1, stats
    out = [codec.decode(v) for _, v in read_topic(s.kafka_bootstrap, s.topic(topics.READINGS))]
    assert out == [_reading("proc-b", now, 5.0)]


async def test_records_of_unregistered_devices_are_dead_lettered_with_the_reason(own: Settings) -> None:
    s = own
    await register(s.pg_dsn, "known-1")
    now = int(time.time() * 1000)
    await _produce(s, [_reading("known-1", now, 1.0), _reading("ghost-1", now, 1.0), _failure("ghost-2", now)])

    async def known_seen(pool: asyncpg.Pool) -> bool:
        return "known-1" in await device_repo.load_states(pool, ["known-1"])

    await _run_core_until(s, known_seen, 3)
    dead = [codec.decode_dead_letter(v) for _, v in read_topic(s.kafka_bootstrap, s.topic(topics.READINGS_DLQ))]
    assert sorted(d["reason"] for d in dead) == [
        "unknown device 'ghost-1': not registered in devices.devices",
        "unknown device 'ghost-2': not registered in devices.devices"]
    out = [codec.decode(v) for _, v in read_topic(s.kafka_bootstrap, s.topic(topics.READINGS))]
    assert [b.device_id for b in out] == ["known-1"]
    async with asyncpg.create_pool(s.pg_dsn, min_size=1, max_size=1) as pool:
        assert set(await device_repo.load_states(pool, ["ghost-1", "ghost-2", "known-1"])) == {"known-1"}
