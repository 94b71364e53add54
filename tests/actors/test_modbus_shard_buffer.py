"""A Modbus shard whose Kafka does not answer, on the real simulator, without Ray around it: it keeps
polling on its grid over the connections it has, holds what it polled up to the configured bound, and
counts what overflowed."""
from __future__ import annotations

import socket
import time

from actors.modbus_shard import SHARD_PRODUCER_CONFIG, ModbusShardCore
from meterray.app.demo import manifest_connections
from meterray.settings import Settings
from storage.kafka.producer import AsyncProducer
from tests.actors.conftest import until


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_kafka_fills_the_outbox_to_its_bound_and_counts_the_overflow(
        settings: Settings, simulator: list[dict]) -> None:
    s = settings.model_copy(update={"shard_buffer_mb": 0.02})  # ~27 poll results of ~750 bytes
    producer = AsyncProducer(f"127.0.0.1:{_closed_port()}", **SHARD_PRODUCER_CONFIG)
    core = ModbusShardCore(s, producer)
    connections = manifest_connections(simulator, 1.0, 0.5)
    await core.assign(connections)
    try:
        deadline = time.monotonic() + 60
        await until(lambda: core.stats.buffer_dropped_records >= 2 * len(simulator), 60, "the outbox to overflow",
                    explain=core.stats.summary)
        summary = {**core.stats.summary(), **core.buffer_summary()}
        print(f"unreachable Kafka: {summary}")
        assert core.outbox.nbytes <= core.outbox.max_bytes == int(0.02 * 2**20)
        assert summary["buffer_dropped_polls"] >= 2 and summary["buffer_dropped_readings"] > 0
        assert summary["delivered"] == 0
        assert summary["connects"] == len(connections), "Kafka being away closed no Modbus connection"
        # Polling goes on: every meter is read again, while what is held stays within the bound.
        polled = core.stats.polls_ok
        await until(lambda: core.stats.polls_ok >= polled + 2 * len(simulator), deadline + 30 - time.monotonic(),
                    "every meter to be read again", explain=core.stats.summary)
        assert core.outbox.nbytes <= core.outbox.max_bytes
        assert core.stats.connects == len(connections)
    finally:
        await core.stop(drain_timeout_s=0)
        await producer.close()
