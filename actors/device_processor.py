"""DeviceProcessor: owns the Kafka partitions of `readings.raw` assigned to it and every device there.

For each batch: decode, validate against each device's state (flags, never drops), publish the
readings and the state transitions, checkpoint the touched states to PostgreSQL, then commit.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import asyncpg
import ray
from confluent_kafka import Message

from actors import metrics
from actors.consumer_stage import ConsumerStage, StageHost
from meterray.device_state import DeviceState
from meterray.domain import PollFailure, ReadingBatch
from meterray.settings import Settings
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer, OutMessage
from storage.postgres import devices as device_repo

GROUP_ID = "meterray-device-processor"


class DeviceProcessorCore(ConsumerStage):
    role = "device-processor"

    def __init__(self, settings: Settings, pool: asyncpg.Pool, producer: AsyncProducer, member: str) -> None:
        super().__init__(settings, GROUP_ID, topics.READINGS_RAW, member)
        self._pool = pool
        self._producer = producer
        self._states: dict[str, DeviceState] = {}
        self._rebalances_seen = 0
        self._out_readings = settings.topic(topics.READINGS)
        self._out_events = settings.topic(topics.DEVICE_EVENTS)

    async def handle(self, messages: Sequence[Message]) -> None:
        if self._consumer.rebalances != self._rebalances_seen:
            # Devices may have been owned by another processor meanwhile: its checkpoints are newer.
            self._states.clear()
            self._rebalances_seen = self._consumer.rebalances
        items: list[ReadingBatch | PollFailure] = []
        out: list[OutMessage] = []
        for m in messages:
            try:
                items.append(codec.decode(m.value()))
            except codec.CodecError as err:
                out.append(self.dead_letter(m, str(err)))
        await self._load_states({item.device_id for item in items})
        now_ms = int(time.time() * 1000)
        touched: dict[str, DeviceState] = {}
        n_readings = 0
        for item in items:
            state = self._states[item.device_id]
            batch, events = state.apply(item, now_ms)
            touched[item.device_id] = state
            key = item.device_id.encode()
            partition = topics.partition_for(item.device_id, self._partitions)
            if batch is not None:
                n_readings += len(batch.values)
                out.append((self._out_readings, partition, key, codec.encode(batch)))
            for e in events:
                out.append((self._out_events, partition, key, codec.encode_event(e)))
                metrics.count(metrics.device_events(), 1, kind=e.kind, status=e.status.value)
        await self._producer.send_many(out)
        await device_repo.save_states(self._pool, [s.checkpoint() for s in touched.values()])
        metrics.count(metrics.readings(), n_readings, stage=self.role)
        metrics.count(metrics.dead_letters(), len(messages) - len(items), stage=self.role)

    async def _load_states(self, device_ids: set[str]) -> None:
        missing = device_ids - self._states.keys()
        if not missing:
            return
        rows = await device_repo.load_states(self._pool, missing)
        for device_id in missing:
            row = rows.get(device_id)
            self._states[device_id] = DeviceState.from_checkpoint(row) if row else DeviceState(device_id)


@ray.remote(num_cpus=0, max_restarts=0)
class DeviceProcessor(StageHost):
    """Ray actor around DeviceProcessorCore; the supervisor recreates it when it dies."""

    core_class = DeviceProcessorCore
