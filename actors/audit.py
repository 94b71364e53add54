"""Process events on the Kafka topic `audit`: actor started, stopped, restarted, the runtime reconfigured.

One JSON record per event, keyed by the actor's name (so one actor's events stay in order on one
partition): `ts` (ms), `kind`, `actor`, `role`, `node_id` of the supervisor that saw it, and `details`.
Kinds: `supervisor_started`, `actor_started`, `actor_restarted` (with the reason the old one was
declared gone), `actor_stopped`, `reconfigured` (connections added, removed, changed).

Auditing never holds the runtime up: `emit` queues the record and returns; a record Kafka does not take
is logged, not retried (the log and the supervisor's status keep the same facts).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
import ray

from meterray.settings import Settings
from storage.kafka import topics
from storage.kafka.producer import AsyncProducer

log = logging.getLogger(__name__)

SUPERVISOR_STARTED = "supervisor_started"
ACTOR_STARTED = "actor_started"
ACTOR_RESTARTED = "actor_restarted"
ACTOR_STOPPED = "actor_stopped"
RECONFIGURED = "reconfigured"


def encode(kind: str, actor: str, role: str, node_id: str | None, details: dict[str, Any]) -> bytes:
    return orjson.dumps({"ts": int(time.time() * 1000), "kind": kind, "actor": actor, "role": role,
                         "node_id": node_id, "details": details})


class AuditLog:
    def __init__(self, settings: Settings) -> None:
        self._topic = settings.topic(topics.AUDIT)
        self._partitions = settings.kafka_partitions
        self._producer = AsyncProducer(settings.kafka_bootstrap)
        self._pending: set[asyncio.Task[None]] = set()
        self._node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None

    def emit(self, kind: str, actor: str, role: str, **details: Any) -> None:
        record = (self._topic, topics.partition_for(actor, self._partitions), actor.encode(),
                  encode(kind, actor, role, self._node_id, details))
        task = asyncio.get_running_loop().create_task(self._send(record))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self, record: tuple[str, int, bytes, bytes]) -> None:
        try:
            await self._producer.start()
            await self._producer.send_many([record])
        except Exception as err:  # the event is in the log line below instead
            log.warning("audit event not delivered (%s): %s", err, record[3].decode())

    async def close(self, timeout_s: float = 10.0) -> None:
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout_s)
        await self._producer.close()
