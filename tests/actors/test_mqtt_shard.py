"""An MQTT shard whose Kafka does not answer, on the real Mosquitto, without Ray around it: it
acknowledges nothing, holds no more than the in-flight window, and a shard that takes over the
session (same client id) with Kafka back gets every message, so all of them reach Kafka."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from actors.mqtt_shard import SHARD_PRODUCER_CONFIG, MqttShardCore
from meterray.mqtt_config import MqttConnection
from meterray.settings import Settings
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer
from tests.actors.conftest import until
from tests.actors.test_modbus_shard_buffer import _closed_port
from tests.pipeline.helpers import read_topic

INFLIGHT = 20


async def test_nothing_is_acknowledged_while_kafka_is_away_and_a_resumed_session_delivers_everything(
        own: Settings) -> None:
    tag = f"shardwt-{time.monotonic_ns()}"
    conn = MqttConnection(tag, own.mqtt_host, own.mqtt_port, f"{tag}/meterray/v1/+/readings", auto_register=True,
                          inflight=INFLIGHT, session_expiry_s=120)
    away = AsyncProducer(f"127.0.0.1:{_closed_port()}", **{**SHARD_PRODUCER_CONFIG, "message.timeout.ms": 1500})
    core = MqttShardCore(own, away)
    await core.configure(conn, 0)
    try:
        await until(lambda: core.health()["subscribed"], 30, "the shard to subscribe", every_s=0.1)
        sim = subprocess.run([sys.executable, "-m", "simulators.mqtt_gateway", "--host", own.mqtt_host, "--port",
                              str(own.mqtt_port), "--prefix", tag, "--device-prefix", f"{tag}-", "--meters", "5",
                              "--rate", "200", "--count", "120"], capture_output=True, text=True, timeout=120)
        published = json.loads(sim.stdout.strip().splitlines()[-1])
        assert published["published"] == 120
        await until(lambda: core.stats.messages >= INFLIGHT and core.stats.delivery_failures >= 2, 30,
                    "the window to fill and Kafka to refuse twice", every_s=0.1)
        await asyncio.sleep(1.0)  # the broker sends nothing beyond the window while nothing is acknowledged
        assert core.stats.acked == 0
        assert core.stats.messages == INFLIGHT, core.stats.summary()
    finally:
        await core.stop(drain_timeout_s=0.5)
        await away.close()
    # A successor with Kafka: same client id, so the broker's session (20 sent + 100 queued) is its own.
    async with AsyncProducer(own.kafka_bootstrap, **SHARD_PRODUCER_CONFIG) as producer:
        successor = MqttShardCore(own, producer)
        await successor.configure(conn, 0)
        try:
            await until(lambda: successor.stats.acked >= 120, 60, "every message to be delivered and acknowledged",
                        every_s=0.1)
            assert successor.stats.redelivered >= INFLIGHT  # the unacknowledged ones came again, marked DUP
        finally:
            await successor.stop(forget_session=True)
    records = [codec.decode(v) for _, v in read_topic(own.kafka_bootstrap, own.topic(topics.READINGS_RAW))]
    assert len({(r.device_id, r.ts_ms) for r in records}) == published["readings"] == 120
    assert sum(v.value for r in records for v in getattr(r, "values", ())) == published["checksum"]
