"""A Modbus shard whose process stalls for whole poll intervals (a loaded machine, a long pause)
accounts for every slot of its grid on the real simulator and Kafka: each slot is a reading or a
SKIPPED record, exactly once, and the slot under way when the stall ends is still polled; its latency
figures hold the polls only."""
from __future__ import annotations

import time
from collections import defaultdict

from actors.modbus_shard import SHARD_PRODUCER_CONFIG, ModbusShardCore
from meterray.app.demo import manifest_connections
from meterray.domain import FailureKind, PollFailure, ReadingBatch
from meterray.settings import Settings
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer
from tests.actors.conftest import until
from tests.pipeline.helpers import read_topic

INTERVAL_S = 1.0
STALL_S = 3.6  # the event loop held: at least two slots of every connection pass whole


async def test_a_stalled_shard_accounts_for_every_slot_of_its_grid(own: Settings, simulator: list[dict]) -> None:
    producer = AsyncProducer(own.kafka_bootstrap, **SHARD_PRODUCER_CONFIG)
    core = ModbusShardCore(own, producer)
    connections = manifest_connections(simulator, INTERVAL_S, 0.5)
    devices = [d.device_id for c in connections for d in c.devices]
    await core.assign(connections)
    try:
        deadline = time.monotonic() + 60
        await until(lambda: core.stats.polls_ok >= 2 * len(devices), 60, "every meter to be read twice",
                    explain=core.stats.summary)
        stalled_at_ms = int(time.time() * 1000)
        time.sleep(STALL_S)  # noqa: ASYNC251  # the point: nothing in this process runs meanwhile
        resumed_ms = int(time.time() * 1000)
        polled = core.stats.polls_ok
        await until(lambda: core.stats.polls_ok >= polled + 3 * len(devices), deadline + 30 - time.monotonic(),
                    "three more rounds after the stall", explain=core.stats.summary)
    finally:
        await core.stop(drain_timeout_s=10)
        await producer.close()
    overruns = core.stats.overruns
    # The latency figures count polls only: a skipped slot was not polled, so it is no sample.
    assert len(core.stats.latencies_ms) == core.stats.polls_ok + core.stats.polls_failed, core.stats.summary()

    slots: dict[str, list[int]] = defaultdict(list)
    skipped: dict[str, list[int]] = defaultdict(list)
    for _, value in read_topic(own.kafka_bootstrap, own.topic(topics.READINGS_RAW), timeout_s=30):
        item = codec.decode(value)
        assert isinstance(item, ReadingBatch | PollFailure)
        slots[item.device_id].append(item.ts_ms)
        if isinstance(item, PollFailure):
            assert item.kind is FailureKind.SKIPPED, item  # the simulator answers every poll
            assert "not polled" in item.detail
            skipped[item.device_id].append(item.ts_ms)
    interval_ms = int(INTERVAL_S * 1000)
    print(f"stall {STALL_S}s: {overruns} slots skipped over {len(connections)} connections; "
          f"per device {sorted({len(v) for v in skipped.values()})}")
    assert sorted(slots) == sorted(devices)
    for device_id, ts in slots.items():
        ts.sort()
        assert len(ts) == len(set(ts)), f"{device_id}: a slot twice"
        steps = {b - a for a, b in zip(ts, ts[1:], strict=False)}
        assert steps == {interval_ms}, f"{device_id}: a gap on its grid: steps {sorted(steps)}"
        gone = skipped[device_id]
        assert len(gone) >= 2, f"{device_id}: {STALL_S}s stalled, yet {len(gone)} slots skipped"
        assert all(stalled_at_ms - interval_ms < s < resumed_ms for s in gone), (device_id, gone)
    assert overruns == sum(len(skipped[c.devices[0].device_id]) for c in connections)  # counted per connection
