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
from meterray.domain import DeviceEvent, DeviceStatus, PollFailure, Quality, ReadingBatch, StatusReport
from meterray.health import DEFAULT_POLICY, HealthPolicy
from meterray.settings import Settings
from storage import sink_errors
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer, OutMessage
from storage.postgres import devices as device_repo

GROUP_ID = "meterray-device-processor"
SWEEP_EVERY_S = 1.0  # the inactivity sweep over every owned device
SCHEDULE_RELOAD_S = 30.0  # registered devices and their poll intervals, re-read this often
_FLAGS = tuple((int(f), f.name or str(int(f))) for f in Quality if f.value)
Item = ReadingBatch | PollFailure | StatusReport


class DeviceProcessorCore(ConsumerStage):
    role = "device-processor"

    def __init__(self, settings: Settings, pool: asyncpg.Pool, producer: AsyncProducer, member: str,
                 consumer_config: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings, GROUP_ID, topics.READINGS_RAW, member, producer, consumer_config)
        self._pool = pool
        self._member = member
        self._input = settings.topic(topics.READINGS_RAW)
        self._states: dict[str, DeviceState] = {}
        self._unsaved: set[str] = set()  # published but not yet checkpointed
        self._transitions: list[DeviceEvent] = []  # published, not yet stored in devices.health_transitions
        self._known = KnownDevices(pool)
        self._rebalances_seen = 0
        self._out_readings = settings.topic(topics.READINGS)
        self._out_events = settings.topic(topics.DEVICE_EVENTS)
        self._policies: dict[str, HealthPolicy] = {}
        self._registered_ms: dict[str, int] = {}
        self._partition_of: dict[str, int] = {}  # device → input partition, for the sweep
        self._schedule_at = 0.0
        self._owned: set[int] = set()  # input partitions
        self._owned_since_ms: dict[int, int] = {}
        self._committed: dict[int, int] = {}  # at the assignment: where the partition's reading starts
        self._last_receive_ms: dict[int, int] = {}  # Kafka timestamp of the last record processed, by partition
        self._input_clock_ms: int | None = None  # the newest Kafka timestamp processed, any partition
        self._sweep_at = 0.0
        self.skipped = 0  # items already applied (replays and retries)
        self.swept_events = 0

    async def handle(self, messages: Sequence[Message]) -> None:
        await self._follow_assignment()
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
        transitions: list[DeviceEvent] = []
        n_readings = 0
        flagged: dict[int, int] = {}
        received: dict[int, int] = {}
        for m, item in items:
            p = m.partition() or 0
            at = SourcePosition(p, m.offset() or 0, m.topic())
            receive_ms = m.timestamp()[1]
            if receive_ms > received.get(p, 0):
                received[p] = receive_ms
            state = work.get(item.device_id) or self._states[item.device_id]
            if not state.applies(at):
                self.skipped += 1
                continue
            if item.device_id not in work:
                state = work[item.device_id] = state.copy()
            batch, events = state.apply(item, now_ms, at, receive_ms)
            key = item.device_id.encode()
            partition = topics.partition_for(item.device_id, self._partitions)
            if batch is not None:
                n_readings += len(batch.values)
                if batch is not item:  # validation flagged some of its values
                    for v in batch.values:
                        if v.quality:
                            flagged[v.quality] = flagged.get(v.quality, 0) + 1
                out.append((self._out_readings, partition, key, codec.encode(batch)))
            for e in events:
                out.append((self._out_events, partition, key, codec.encode_event(e)))
                metrics.count(metrics.device_events(), 1, kind=e.kind, status=e.status.value)
                if e.kind == "status":
                    transitions.append(e)
        await self._producer.send_many(out)
        self._states.update(work)
        self._unsaved.update(work)
        self._transitions += transitions
        self._last_receive_ms.update(received)
        if received:
            newest = max(received.values())
            if self._input_clock_ms is None or newest > self._input_clock_ms:
                self._input_clock_ms = newest
        await self._checkpoint()
        self._count(n_readings, flagged, now_ms, received)

    def _count(self, n_readings: int, flagged: dict[int, int], now_ms: int, received: dict[int, int]) -> None:
        metrics.count(metrics.readings(), n_readings, stage=self.role)
        counter = metrics.reading_quality()
        n_flagged = 0
        by_flag: dict[str, int] = {}
        for mask, n in flagged.items():
            n_flagged += n
            for bit, name in _FLAGS:
                if mask & bit:
                    by_flag[name] = by_flag.get(name, 0) + n
        metrics.count(counter, n_readings - n_flagged, flag="OK")
        for name, n in by_flag.items():
            metrics.count(counter, n, flag=name)
        lag = metrics.processing_lag_s()
        for p, receive_ms in received.items():
            lag.set(max(0.0, (now_ms - receive_ms) / 1000), tags={"partition": str(p)})

    def _decode(self, messages: Sequence[Message]) -> tuple[list[tuple[Message, Item]], list[tuple[Message, str]]]:
        items: list[tuple[Message, Item]] = []
        refused: list[tuple[Message, str]] = []
        for m in messages:
            try:
                items.append((m, codec.decode(m.value())))
            except codec.CodecError as err:
                refused.append((m, str(err)))
        return items, refused

    async def _checkpoint(self) -> None:
        if not self._unsaved and not self._transitions:
            return
        try:
            await device_repo.save_states(self._pool, [self._states[d].checkpoint() for d in self._unsaved],
                                          self._transitions)
        except Exception as err:
            if sink_errors.classify(err) is sink_errors.SinkError.DATA:
                # The state itself cannot be stored: forget it, so the split retry starts again from the
                # last checkpoint and finds the record that makes it unstorable.
                for device_id in self._unsaved:
                    self._states.pop(device_id, None)
                self._unsaved.clear()
                self._transitions.clear()
            raise
        self._unsaved.clear()
        self._transitions.clear()

    # -- ownership: which devices are ours, their timing, their checkpoints -------------------------
    async def _follow_assignment(self) -> None:
        """After a rebalance, take over every device of the partitions now owned, silent ones
        included, from their checkpoints: devices may have been owned by another processor meanwhile,
        whose checkpoints are newer than anything held here."""
        reload = time.monotonic() - self._schedule_at >= SCHEDULE_RELOAD_S
        if self._consumer.rebalances == self._rebalances_seen and not reload:
            return
        now_ms = int(time.time() * 1000)
        if reload or not self._policies:
            await self._load_schedule()
        if self._consumer.rebalances != self._rebalances_seen:
            self._rebalances_seen = self._consumer.rebalances
            self._states.clear()
            self._unsaved.clear()
            owned = {p for (t, p) in self._consumer.owned() if t == self._input}
            self._owned_since_ms = {p: self._owned_since_ms.get(p, now_ms) if p in self._owned else now_ms
                                    for p in owned}
            self._owned = owned
            self._committed = {p: o for (_, p), o in (await self._consumer.committed(
                [(self._input, p) for p in owned])).items()}
            self._last_receive_ms = {p: t for p, t in self._last_receive_ms.items() if p in owned}
        mine = [d for d, p in self._partition_of.items() if p in self._owned]
        await self._load_states(set(mine))

    async def _load_schedule(self) -> None:
        rows = await device_repo.device_schedule(self._pool)
        self._policies = {r["id"]: HealthPolicy.for_interval(r["poll_interval_s"]) for r in rows}
        self._registered_ms = {r["id"]: int(r["created_at"].timestamp() * 1000) for r in rows}
        self._partition_of = {r["id"]: topics.partition_for(r["id"], self._partitions) for r in rows}
        self._schedule_at = time.monotonic()
        for device_id, state in self._states.items():
            state.policy = self._policies.get(device_id, DEFAULT_POLICY)

    async def _load_states(self, device_ids: set[str]) -> None:
        missing = device_ids - self._states.keys()
        if not missing:
            return
        rows = await device_repo.load_states(self._pool, missing)
        now_ms = int(time.time() * 1000)
        for device_id in missing:
            row = rows.get(device_id)
            policy = self._policies.get(device_id, DEFAULT_POLICY)
            state = DeviceState.from_checkpoint(row, policy) if row else DeviceState(device_id, policy=policy)
            if state.health.watch_since_ms is None or row is None:
                # Silence of a device that never sent anything is measured from when it became ours to watch.
                owned_since = self._owned_since_ms.get(topics.partition_for(device_id, self._partitions), now_ms)
                state.health.watch_since_ms = max(self._registered_ms.get(device_id, now_ms), owned_since)
            self._states[device_id] = state

    # -- the inactivity sweep ---------------------------------------------------------------------
    async def tick(self) -> None:
        if time.monotonic() - self._sweep_at < SWEEP_EVERY_S:
            return
        self._sweep_at = time.monotonic()
        await self._follow_assignment()
        if self._unsaved or self._transitions:  # a checkpoint that failed after its batch was published
            await self._checkpoint()
        stream_now = self._stream_times()
        work: dict[str, DeviceState] = {}
        out: list[OutMessage] = []
        events: list[DeviceEvent] = []
        by_status = dict.fromkeys((s.value for s in DeviceStatus), 0)
        partition_of = self._partition_of
        for device_id, state in self._states.items():
            h = state.health
            by_status[h.status.value] += 1
            quiet = h.last_activity_ms if h.last_activity_ms is not None else h.watch_since_ms
            p = partition_of.get(device_id)
            if p is None:
                p = partition_of[device_id] = topics.partition_for(device_id, self._partitions)
            at = stream_now.get(p)
            if at is None:  # not ours any more, or its partition's time is not known yet
                continue
            if quiet is not None and at - quiet < state.policy.timeout_ms and h.partner_online is None:
                continue  # heard from within its timeout: nothing silence could change
            copy = state.copy()
            event = copy.sweep(at)
            if event is not None or (copy.health.link, copy.health.data) != (h.link, h.data):
                work[device_id] = copy
            if event is not None:
                events.append(event)
                metrics.count(metrics.device_events(), 1, kind=event.kind, status=event.status.value)
                out.append((self._out_events, p, device_id.encode(), codec.encode_event(event)))
        if out:
            await self._producer.send_many(out)
        self._states.update(work)
        self._unsaved.update(work)
        self._transitions += events
        self.swept_events += len(events)
        await self._checkpoint()
        gauge = metrics.devices_by_status()
        for status, n in by_status.items():
            gauge.set(n, tags={"status": status, "processor": self._member})

    def _stream_times(self) -> dict[int, int]:
        """For each owned partition, the time silence is measured against: never the processor's clock,
        always the input's. A partition that is caught up is at the input clock (the newest receive
        time processed on any partition: a device is silent when others are heard and it is not); one
        with records waiting is at the receive time of its last record processed. So a processor
        catching up after a restart, or a stream stopped as a whole (Kafka away, PostgreSQL away),
        raises no alarm: that silence is the pipeline's, not the devices'. The price: when every
        source stops at once nothing is declared silent until input flows again."""
        out: dict[int, int] = {}
        clock = self._input_clock_ms
        if clock is None:
            return out
        lag_gauge = metrics.consumer_lag_messages()
        for p in self._owned:
            lag = self._consumer.lag(self._input, p, self._committed.get(p))
            if lag is not None:
                lag_gauge.set(lag, tags={"partition": str(p)})
            if lag == 0:
                out[p] = clock
                metrics.processing_lag_s().set(0.0, tags={"partition": str(p)})
            elif p in self._last_receive_ms:
                out[p] = self._last_receive_ms[p]
        return out

    async def ping(self) -> dict[str, object]:
        by_status: dict[str, int] = {}
        for state in self._states.values():
            by_status[state.health.status.value] = by_status.get(state.health.status.value, 0) + 1
        return {**await super().ping(), "skipped": self.skipped, "devices": by_status,
                "swept_events": self.swept_events, "owned_partitions": sorted(self._owned),
                "input_clock_ms": self._input_clock_ms}


@ray.remote(num_cpus=0, max_restarts=0)
class DeviceProcessor(StageHost):
    """Ray actor around DeviceProcessorCore; the supervisor recreates it when it dies."""

    core_class = DeviceProcessorCore
