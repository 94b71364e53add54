"""DeviceProcessor: owns the Kafka partitions of `readings.raw` assigned to it and every device there.

For each batch: decode (refused records and records of unregistered devices go to the DLQ), apply
each item to a working copy of its device's state (flags, never drops), publish the readings and
state transitions, adopt the copies, checkpoint the touched states to PostgreSQL, then commit.

Idempotence (issue 5, item 4). Each state keeps the input position of the last item it applied
and the checkpoint stores it, so an item is applied once however often it is delivered:
- a failed publish leaves the states as they were (the copies are dropped), so the retry applies
  the batch again from the same state and publishes the same outputs;
- a failed checkpoint after a successful publish keeps the adopted states: the retry skips the
  items already applied and published, and only saves the checkpoint again;
- a processor that dies between checkpoint and commit: its successor reloads the checkpoint and
  skips everything up to the saved position, publishing nothing twice.
The one window left is a crash between publish and checkpoint: the successor applies those items
again from the older checkpoint and publishes identical outputs a second time. Readings are
idempotent downstream (same key, same value and flags); a repeated event is identical to the first
(same device, kind, timestamp, reason), so a consumer of `device-events` deduplicates on
(device_id, kind, ts). Closing that window would take Kafka transactions spanning the checkpoint.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import ray
from confluent_kafka import Message

from actors import metrics
from actors.consumer_stage import ConsumerStage, StageHost
from actors.known_devices import KnownDevices
from meterray.device_state import DeviceState, SourcePosition
from meterray.domain import PollFailure, ReadingBatch
from meterray.settings import Settings
from storage import sink_errors
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer, OutMessage
from storage.postgres import devices as device_repo

GROUP_ID = "meterray-device-processor"


class DeviceProcessorCore(ConsumerStage):
    role = "device-processor"

    def __init__(self, settings: Settings, pool: asyncpg.Pool, producer: AsyncProducer, member: str,
                 consumer_config: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings, GROUP_ID, topics.READINGS_RAW, member, producer, consumer_config)
        self._pool = pool
        self._states: dict[str, DeviceState] = {}
        self._unsaved: set[str] = set()  # published but not yet checkpointed
        self._known = KnownDevices(pool)
        self._rebalances_seen = 0
        self._out_readings = settings.topic(topics.READINGS)
        self._out_events = settings.topic(topics.DEVICE_EVENTS)
        self.skipped = 0  # items already applied (replays and retries)

    async def handle(self, messages: Sequence[Message]) -> None:
        if self._consumer.rebalances != self._rebalances_seen:
            # Devices may have been owned by another processor meanwhile: its checkpoints are newer.
            self._states.clear()
            self._unsaved.clear()
            self._rebalances_seen = self._consumer.rebalances
        items, refused = self._decode(messages)
        unknown = await self._known.unknown({item.device_id for _, item in items})
        if unknown:
            refused += [(m, f"unknown device {item.device_id!r}: not registered in devices.devices")
                        for m, item in items if item.device_id in unknown]
            items = [(m, item) for m, item in items if item.device_id not in unknown]
        await self.send_dead_letters(refused)
        await self._load_states({item.device_id for _, item in items})

        now_ms = int(time.time() * 1000)
        work: dict[str, DeviceState] = {}
        out: list[OutMessage] = []
        n_readings = 0
        for m, item in items:
            at = SourcePosition(m.partition() or 0, m.offset() or 0, m.topic())
            state = work.get(item.device_id) or self._states[item.device_id]
            if not state.applies(at):
                self.skipped += 1
                continue
            if item.device_id not in work:
                state = work[item.device_id] = state.copy()
            batch, events = state.apply(item, now_ms, at)
            key = item.device_id.encode()
            partition = topics.partition_for(item.device_id, self._partitions)
            if batch is not None:
                n_readings += len(batch.values)
                out.append((self._out_readings, partition, key, codec.encode(batch)))
            for e in events:
                out.append((self._out_events, partition, key, codec.encode_event(e)))
                metrics.count(metrics.device_events(), 1, kind=e.kind, status=e.status.value)
        await self._producer.send_many(out)
        self._states.update(work)
        self._unsaved.update(work)
        await self._checkpoint()
        metrics.count(metrics.readings(), n_readings, stage=self.role)

    def _decode(self, messages: Sequence[Message]) -> tuple[list[tuple[Message, ReadingBatch | PollFailure]],
                                                            list[tuple[Message, str]]]:
        items: list[tuple[Message, ReadingBatch | PollFailure]] = []
        refused: list[tuple[Message, str]] = []
        for m in messages:
            try:
                items.append((m, codec.decode(m.value())))
            except codec.CodecError as err:
                refused.append((m, str(err)))
        return items, refused

    async def _checkpoint(self) -> None:
        if not self._unsaved:
            return
        try:
            await device_repo.save_states(self._pool, [self._states[d].checkpoint() for d in self._unsaved])
        except Exception as err:
            if sink_errors.classify(err) is sink_errors.SinkError.DATA:
                # The state itself cannot be stored: forget it, so the split retry starts again from the
                # last checkpoint and finds the record that makes it unstorable.
                for device_id in self._unsaved:
                    self._states.pop(device_id, None)
                self._unsaved.clear()
            raise
        self._unsaved.clear()

    async def _load_states(self, device_ids: set[str]) -> None:
        missing = device_ids - self._states.keys()
        if not missing:
            return
        rows = await device_repo.load_states(self._pool, missing)
        for device_id in missing:
            row = rows.get(device_id)
            self._states[device_id] = DeviceState.from_checkpoint(row) if row else DeviceState(device_id)

    async def ping(self) -> dict[str, object]:
        return {**await super().ping(), "skipped": self.skipped}


@ray.remote(num_cpus=0, max_restarts=0)
class DeviceProcessor(StageHost):
    """Ray actor around DeviceProcessorCore; the supervisor recreates it when it dies."""

    core_class = DeviceProcessorCore
