"""Supervisor: the one detached, named actor that owns the runtime's desired state.

It reads the Modbus connections from PostgreSQL, spreads them over ModbusShard actors, runs the
device processors and PostgreSQL writers, and watches them all: a child that dies or stops answering
is replaced by a fresh actor with the same assignment (its state lives in Kafka and PostgreSQL).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import ray
from ray.actor import ActorHandle

from actors import metrics
from actors.device_processor import DeviceProcessor
from actors.modbus_shard import ModbusShard
from actors.pg_writer import PgWriter
from meterray.domain import ModbusConnection
from meterray.settings import Settings
from storage.postgres.devices import load_modbus_connections

log = logging.getLogger(__name__)

SUPERVISOR_NAME = "supervisor"
WATCH_INTERVAL_S = 1.0
PING_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 20.0


@dataclass(slots=True)
class Child:
    name: str
    role: str
    actor_class: Any
    assignment: list[ModbusConnection] = field(default_factory=list)
    handle: ActorHandle | None = None
    restarts: int = 0
    last_ping: dict[str, Any] = field(default_factory=dict)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Supervisor:
    def __init__(self, settings: Settings) -> None:
        logging.basicConfig(level=settings.log_level)
        self._settings = settings
        self._children: dict[str, Child] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._started_at = time.time()
        self._start_lock = asyncio.Lock()
        if ray.get_runtime_context().was_current_actor_reconstructed:
            # Our children died with the old process: rebuild them without waiting for a caller.
            asyncio.get_running_loop().create_task(self.start())

    async def start(self) -> dict[str, Any]:
        """Idempotent: (re)builds every child from PostgreSQL and starts watching them."""
        async with self._start_lock:
            if self._watcher is None:
                await self._build_children()
        return await self.status()

    async def _build_children(self) -> None:
        conn = await asyncpg.connect(self._settings.pg_dsn)
        try:
            connections = await load_modbus_connections(conn)
        finally:
            await conn.close()
        s = self._settings
        for role, actor_class, count in (("device-processor", DeviceProcessor, s.device_processors),
                                         ("pg-writer", PgWriter, s.pg_writers)):
            for i in range(count):
                self._children[f"{role}-{i}"] = Child(f"{role}-{i}", role, actor_class)
        for i in range(0, len(connections), s.connections_per_shard):
            name = f"modbus-shard-{i // s.connections_per_shard}"
            self._children[name] = Child(name, "modbus-shard", ModbusShard, connections[i:i + s.connections_per_shard])
        await asyncio.gather(*(self._launch(c) for c in self._children.values()))
        self._watcher = asyncio.create_task(self._watch(), name="supervisor-watch")
        log.info("supervisor started %d children for %d Modbus connections", len(self._children), len(connections))

    async def _launch(self, child: Child) -> None:
        child.handle = child.actor_class.remote(self._settings, child.name)
        if child.role == "modbus-shard":
            await child.handle.assign.remote(child.assignment)
        else:
            await child.handle.start.remote()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            await asyncio.gather(*(self._check(c) for c in list(self._children.values())))

    async def _check(self, child: Child) -> None:
        try:
            assert child.handle is not None
            child.last_ping = await asyncio.wait_for(child.handle.ping.remote(), PING_TIMEOUT_S)
            return
        except (ray.exceptions.RayActorError, asyncio.TimeoutError, RuntimeError, AssertionError) as err:
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        log.warning("%s is gone (%s); starting a replacement", child.name, reason)
        if child.handle is not None:
            ray.kill(child.handle, no_restart=True)
        child.restarts += 1
        metrics.count(metrics.actor_restarts(), 1, role=child.role)
        try:
            await self._launch(child)
        except Exception as err:  # the next watch round tries again
            log.error("could not restart %s: %s", child.name, err)

    async def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self._started_at, 1),
            "children": {
                c.name: {"role": c.role, "connections": len(c.assignment), "restarts": c.restarts,
                         "last_ping": c.last_ping}
                for c in self._children.values()
            },
        }

    async def handles(self, role: str) -> list[ActorHandle]:
        return [c.handle for c in self._children.values() if c.role == role and c.handle is not None]

    async def shutdown(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        # Children flush their producers on stop; one that hangs must not hold the others up.
        stops: list[Awaitable[Any]] = [
            asyncio.wait_for(c.handle.stop.remote(), STOP_TIMEOUT_S) for c in self._children.values() if c.handle]
        await asyncio.gather(*stops, return_exceptions=True)
        for c in self._children.values():
            if c.handle is not None:
                ray.kill(c.handle, no_restart=True)
