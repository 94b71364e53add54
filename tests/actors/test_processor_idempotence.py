"""Issue 5, item 4: the device processor applies each input once, whether a batch is retried after
its checkpoint failed or replayed by a successor after a crash between checkpoint and commit.

Real failures only: a trigger in this module's own database refuses one checkpoint write, and a
processor is abandoned (its consumer closed) after it checkpointed and before it committed.
"""
from __future__ import annotations

import time

import asyncpg

from actors.device_processor import DeviceProcessorCore
from meterray.domain import DeviceEvent, DeviceStatus, Quality, ReadingBatch
from meterray.settings import Settings
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer
from storage.postgres import devices as device_repo
from tests.actors.conftest import register
from tests.actors.test_device_processor import ENERGY, _failure, _produce, _reading, _run_core_until
from tests.pipeline.helpers import read_topic

FAIL_ONCE = """
CREATE SEQUENCE IF NOT EXISTS test_checkpoint_failures;
CREATE OR REPLACE FUNCTION test_fail_first_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A sequence is not rolled back with the failed transaction, so this fires exactly once.
    IF NEW.device_id LIKE 'idem-retry-%' AND nextval('test_checkpoint_failures') = 1 THEN
        RAISE EXCEPTION 'injected: checkpoint store refused the write';
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER test_fail_first_checkpoint BEFORE INSERT OR UPDATE ON devices.device_state
    FOR EACH ROW EXECUTE FUNCTION test_fail_first_checkpoint();
"""


def _scenario(device_id: str) -> list:
    """In one batch: energy 100 → 50 (one real decrease), then two failed polls; and a second
    device `<id>-f` that only fails twice (applied twice, it would count four and go offline)."""
    t0 = int(time.time() * 1000) // 1000 * 1000
    return [_reading(device_id, t0, 100.0), _failure(f"{device_id}-f", t0), _reading(device_id, t0 + 1000, 50.0),
            _failure(device_id, t0 + 2000), _failure(f"{device_id}-f", t0 + 1000), _failure(device_id, t0 + 3000)]


def _outputs(s: Settings, device_id: str) -> tuple[list[ReadingBatch], list[DeviceEvent]]:
    readings = [codec.decode(v) for k, v in read_topic(s.kafka_bootstrap, s.topic(topics.READINGS))
                if k == device_id.encode()]
    events = [codec.decode_event(v) for k, v in read_topic(s.kafka_bootstrap, s.topic(topics.DEVICE_EVENTS))
              if k == device_id.encode()]
    return [r for r in readings if isinstance(r, ReadingBatch)], events


def _assert_applied_once(s: Settings, device_id: str, items: list) -> None:
    readings, events = _outputs(s, device_id)
    assert [(r.ts_ms, r.values[0].value, r.values[0].quality) for r in readings] == [
        (items[0].ts_ms, 100.0, 0), (items[2].ts_ms, 50.0, Quality.COUNTER_DECREASE | Quality.SUSPECT)], readings
    assert [(e.kind, e.previous, e.status) for e in events] == [
        ("status", DeviceStatus.UNKNOWN, DeviceStatus.ONLINE),
        ("counter_decrease", DeviceStatus.ONLINE, DeviceStatus.ONLINE),
        ("status", DeviceStatus.ONLINE, DeviceStatus.DEGRADED)], events
    _, events = _outputs(s, f"{device_id}-f")
    assert [(e.previous, e.status) for e in events] == [(DeviceStatus.UNKNOWN, DeviceStatus.DEGRADED)], events


async def _failures(s: Settings, device_id: str) -> tuple[str, int]:
    state = await _state(s, device_id)
    assert state is not None, device_id
    return state.status, state.consecutive_failures


async def _state(s: Settings, device_id: str) -> device_repo.DeviceCheckpoint | None:
    conn = await asyncpg.connect(s.pg_dsn)
    try:
        return (await device_repo.load_states(conn, [device_id])).get(device_id)
    finally:
        await conn.close()


async def test_a_failed_checkpoint_is_retried_without_applying_the_batch_twice(own: Settings) -> None:
    s, device_id = own, "idem-retry-1"
    await register(s.pg_dsn, device_id, f"{device_id}-f")
    conn = await asyncpg.connect(s.pg_dsn)
    await conn.execute(FAIL_ONCE)
    try:
        items = _scenario(device_id)
        await _produce(s, items)

        async def checkpointed(pool: asyncpg.Pool) -> bool:
            return device_id in await device_repo.load_states(pool, [device_id])

        stats = await _run_core_until(s, checkpointed, len(items))
        assert stats["sink_failures"] == 1 and "injected" in stats["last_error"], stats
        assert await conn.fetchval("SELECT last_value FROM test_checkpoint_failures") >= 1
    finally:
        await conn.execute("DROP TRIGGER test_fail_first_checkpoint ON devices.device_state")
        await conn.close()
    state = await _state(s, device_id)
    assert state is not None
    assert (state.status, state.consecutive_failures) == ("degraded", 2), state
    assert {q: c[:2] for q, c in state.counters.items()} == {ENERGY: [items[2].ts_ms, 50.0]}  # [ts, value, rate]
    assert await _failures(s, f"{device_id}-f") == ("degraded", 2)
    _assert_applied_once(s, device_id, items)
    assert stats["skipped"] == len(items), "the retry found every item applied already"


async def test_a_successor_skips_what_was_checkpointed_but_not_committed(own: Settings) -> None:
    s, device_id = own, "idem-crash-1"
    await register(s.pg_dsn, device_id, f"{device_id}-f")
    items = _scenario(device_id)
    await _produce(s, items)

    # The first processor takes the batch, publishes and checkpoints it, and dies before committing.
    pool = await asyncpg.create_pool(s.pg_dsn, min_size=1, max_size=2)
    producer = AsyncProducer(s.kafka_bootstrap)
    first = DeviceProcessorCore(s, pool, producer, "idem-processor")
    try:
        taken: list = []
        deadline = time.monotonic() + 60
        while len(taken) < len(items):
            assert time.monotonic() < deadline, f"only {len(taken)} messages arrived"
            taken += await first.poll_batch()
        stored = await first.store(taken)
        assert len(stored) == len(items)
    finally:
        await first.stop()  # closes the consumer: nothing is committed
        await producer.close()
        await pool.close()
    state = await _state(s, device_id)
    assert state is not None and state.consecutive_failures == 2
    assert await _failures(s, f"{device_id}-f") == ("degraded", 2)
    assert state.source_partition == topics.partition_for(device_id, s.kafka_partitions)
    assert state.source_offset == max(m.offset() for m in taken if m.key() == device_id.encode())

    # Its successor in the same group gets the same messages again and applies none of them.
    async def caught_up(_pool: asyncpg.Pool) -> bool:
        return True

    stats = await _run_core_until(s, caught_up, len(items), member="idem-processor")
    after = await _state(s, device_id)
    assert after == state, "the replay changed the checkpoint"
    assert await _failures(s, f"{device_id}-f") == ("degraded", 2)
    _assert_applied_once(s, device_id, items)
    assert stats["skipped"] == len(items) and stats["sink_failures"] == 0, stats
