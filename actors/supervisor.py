"""Supervisor: the one detached, named actor that owns the runtime's desired state.

It reads the Modbus connections from PostgreSQL, spreads them over ModbusShard actors, runs the
device processors, PostgreSQL writers and the backfill actor (gap scan and backfill requests), and
watches them all: a child that dies or stops answering
is replaced by a fresh actor with the same assignment (its state lives in Kafka and PostgreSQL).

Reconciling: a trigger on devices.connections / devices.devices NOTIFYs `CONFIG_CHANNEL`; the
supervisor LISTENs, and also re-reads on a timer (`reconcile_interval_s`, which covers a lost
listening connection), then applies only the difference: a shard whose connections did not change
is not called at all, and ModbusShardCore.assign keeps the untouched connections of a called shard
running. So a change touches only the connections it changes.

MQTT connections (devices.mqtt_connections) are read on the same signal: each has `subscribers`
MqttShard children named `mqtt-shard-<connection id>-<i>`; a changed connection's shards are
reconfigured (they reconnect), a removed one's are stopped with their broker sessions, and no other
child is called (`_apply_mqtt`). Their placement is fixed by name: a shard is one MQTT session.

Placement is sticky (`place`): a connection stays on the shard it was given for the supervisor's
life; a new one goes to the least-loaded shard with room (at most `connections_per_shard`
connections and `shard_max_polls_per_s` polls per second), a new shard when all are full. Adding,
changing or removing one connection moves no other. The trade-off against a
pure hash of the connection id (DESIGN.md): a hash over a fixed shard count is stateless (any process
can compute where a connection runs) but its balance is only statistical — with few connections per
shard it leaves shards empty or doubled, and a shard count that follows the number of connections
moves about 1/N of them whenever it changes. Sticky placement is balanced and never moves anything;
its state needs no persistence, because the children die with the supervisor (Ray fate-sharing),
and a rebuilt supervisor places every connection afresh by the same rule (id order).
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import ray
from ray.actor import ActorHandle

from actors import audit, metrics, runtime_gauges
from actors.backfill import BackfillActor
from actors.ch_writer import ChWriter
from actors.device_catalog import DeviceCatalog
from actors.device_processor import DeviceProcessor
from actors.logs import setup_logging
from actors.modbus_shard import ModbusShard
from actors.mqtt_shard import MqttShard
from actors.naming import create_named
from actors.notifier import Notifier
from actors.partner import PartnerActor
from actors.pg_writer import PgWriter
from meterray.domain import ModbusConnection
from meterray.mqtt_config import MqttConnection
from meterray.placement import ingestion_request
from meterray.settings import Settings
from storage.postgres import partners as partner_repo
from storage.postgres.devices import CONFIG_CHANNEL, load_modbus_connections
from storage.postgres.mqtt import load_mqtt_connections
from storage.secrets import cipher

log = logging.getLogger(__name__)

SUPERVISOR_NAME = "supervisor"
SHARD_PREFIX = "modbus-shard-"
PARTNER_PREFIX = "partner-"
MQTT_SHARD_PREFIX = "mqtt-shard-"
WATCH_INTERVAL_S = 1.0
PING_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 20.0
RECONCILE_DEBOUNCE_S = 0.2  # one registration is several statements (and NOTIFYs): read once after them
LISTEN_CHECK_S = 5.0  # how often the listening connection is checked
LISTEN_APPLICATION_NAME = "meterray-supervisor-listen"  # how its session shows in pg_stat_activity


def _shard_index(name: str) -> int:
    m = re.fullmatch(re.escape(SHARD_PREFIX) + r"(\d+)", name)
    return int(m.group(1)) if m else 1 << 30


def place(previous: Mapping[str, str], wanted: Collection[str] | Mapping[str, float], shards: Sequence[str],
          capacity: int, max_polls_per_s: float | None = None) -> dict[str, str]:
    """Connection id → shard name. Placed connections stay where they are; new ones (in id order) go to
    the least-loaded shard with room (lowest index on a tie), or to a new shard when all are full.

    `wanted` may map each connection to its load in polls per second (devices ÷ poll interval): a shard
    then has room while it holds fewer than `capacity` connections AND its load plus the newcomer's
    stays within `max_polls_per_s` (an empty shard always has room), and "least loaded" means fewest
    polls per second. So a shard is sized by the work it does, not only by its sockets: many slow
    connections share one process, fast ones spread over several.
    """
    weight = wanted if isinstance(wanted, Mapping) else dict.fromkeys(wanted, 0.0)
    limit = float("inf") if max_polls_per_s is None else max_polls_per_s
    placed = {cid: shard for cid, shard in previous.items() if cid in weight}
    names = sorted(set(shards) | set(placed.values()), key=_shard_index)
    count = Counter(placed.values())
    polls: dict[str, float] = defaultdict(float)
    for cid, shard in placed.items():
        polls[shard] += weight[cid]
    for cid in sorted(weight.keys() - placed.keys()):
        room = [s for s in names if count[s] == 0 or (count[s] < capacity and polls[s] + weight[cid] <= limit)]
        if room:
            shard = min(room, key=lambda s: (polls[s], count[s], _shard_index(s)))
        else:
            used = {_shard_index(s) for s in names}
            shard = f"{SHARD_PREFIX}{min(i for i in range(len(names) + 1) if i not in used)}"
            names.append(shard)
        placed[cid] = shard
        count[shard] += 1
        polls[shard] += weight[cid]
    return placed


def polls_per_s(connection: ModbusConnection) -> float:
    """The load a connection puts on its shard: one poll per device per interval."""
    return len(connection.devices) / connection.poll_interval_s


@dataclass(slots=True)
class Child:
    name: str
    role: str
    actor_class: Any
    assignment: list[ModbusConnection] = field(default_factory=list)
    handle: ActorHandle | None = None
    restarts: int = 0
    last_ping: dict[str, Any] = field(default_factory=dict)
    started: int = 0  # connection tasks the shard started / stopped on our assign calls, all time
    stopped: int = 0
    config: Any = None  # a partner's PartnerConfig
    version: int = 0  # … and its stored version
    mqtt: tuple[MqttConnection, int] | None = None  # an MQTT shard's connection and subscriber index


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Supervisor:
    def __init__(self, settings: Settings) -> None:
        setup_logging(settings.log_level, SUPERVISOR_NAME)
        self._settings = settings
        self._audit = audit.AuditLog(settings)  # process events on the `audit` topic
        self._children: dict[str, Child] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._background: list[asyncio.Task[None]] = []
        self._started_at = time.time()
        self._start_lock = asyncio.Lock()
        self._apply_lock = asyncio.Lock()  # one reconcile (or shard relaunch) at a time
        self._wake = asyncio.Event()
        self._placement: dict[str, str] = {}  # connection id → shard name
        self._reconciles = 0
        self._last_change: dict[str, dict[str, Any]] = {}  # source (modbus, partners, mqtt) → its last change
        self._partner_problems: dict[str, str] = {}
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
        connections = await self._load()
        s = self._settings
        for role, actor_class, count in (("device-processor", DeviceProcessor, s.device_processors),
                                         ("pg-writer", PgWriter, s.pg_writers), ("backfill", BackfillActor, 1),
                                         ("notifier", Notifier, s.notifiers),
                                         ("device-catalog", DeviceCatalog, 1),
                                         ("ch-writer", ChWriter, s.ch_writers)):
            for i in range(count):
                self._children[f"{role}-{i}"] = Child(f"{role}-{i}", role, actor_class)
        others = list(self._children.values())
        await asyncio.gather(*(self._launch(c) for c in others), self._apply(connections))
        await self._apply_partners()
        await self._apply_mqtt(await self._load_mqtt())
        self._watcher = asyncio.create_task(self._watch(), name="supervisor-watch")
        self._audit.emit(audit.SUPERVISOR_STARTED, SUPERVISOR_NAME, "supervisor", children=sorted(self._children))
        self._background = [asyncio.create_task(self._listen(), name="supervisor-listen"),
                            asyncio.create_task(runtime_gauges.export_forever(self._settings),
                                                name="supervisor-gauges"),
                            asyncio.create_task(self._reconcile_loop(), name="supervisor-reconcile")]
        log.info("supervisor started %d children for %d Modbus connections", len(self._children), len(connections))

    async def _load(self) -> list[ModbusConnection]:
        conn = await asyncpg.connect(self._settings.pg_dsn)
        try:
            return await load_modbus_connections(conn)
        finally:
            await conn.close()

    async def reconcile(self) -> dict[str, Any]:
        """Re-read the desired connections and partners and apply only the difference; returns what changed."""
        summary = await self._apply(await self._load())
        summary["partners"] = await self._apply_partners()
        summary["mqtt"] = await self._apply_mqtt(await self._load_mqtt())
        return summary

    # Partners: one PartnerActor each, reconfigured in place when its stored configuration changes.

    async def _apply_partners(self) -> dict[str, Any]:
        conn = await asyncpg.connect(self._settings.pg_dsn)
        try:
            stored, problems = await partner_repo.load_runnable(conn, cipher(self._settings))
        finally:
            await conn.close()
        for pid, problem in problems.items():
            if self._partner_problems.get(pid) != problem:
                log.error("partner %s is not run: %s", pid, problem)
        self._partner_problems = problems
        async with self._apply_lock:
            wanted = {f"{PARTNER_PREFIX}{p.config.partner_id}": p for p in stored}
            current = {c.name: c for c in self._children.values() if c.role == "partner"}
            removed = sorted(current.keys() - wanted.keys())
            changed = sorted(n for n in current.keys() & wanted.keys() if current[n].config != wanted[n].config)
            added = sorted(wanted.keys() - current.keys())
            for name in removed:
                child = self._children.pop(name)
                if child.handle is not None:
                    try:
                        await asyncio.wait_for(child.handle.stop.remote(), STOP_TIMEOUT_S)
                    except Exception as err:  # it goes either way
                        log.warning("%s did not stop cleanly: %s", name, err)
                    ray.kill(child.handle, no_restart=True)
            calls: list[Awaitable[None]] = []
            for name in added:
                child = self._children[name] = Child(name, "partner", PartnerActor, config=wanted[name].config,
                                                     version=wanted[name].version)
                calls.append(self._launch(child))
            for name in changed:
                child = self._children[name]
                child.config, child.version = wanted[name].config, wanted[name].version
                calls.append(self._reconfigure_partner(child))
            await asyncio.gather(*calls)
            return self._reconciled("partners", added, removed, changed)

    async def _reconfigure_partner(self, child: Child) -> None:
        try:
            assert child.handle is not None
            result: dict[str, int] = await asyncio.wait_for(child.handle.configure.remote(child.config),
                                                            PING_TIMEOUT_S)
            child.started += result["started"]
            child.stopped += result["stopped"]
        except (ray.exceptions.RayActorError, asyncio.TimeoutError, AssertionError) as err:
            log.warning("%s did not take its new configuration (%s); the watcher will replace it", child.name, err)

    # --- MQTT connections: one shard actor per subscriber of each connection -----------------------

    async def _load_mqtt(self) -> list[MqttConnection]:
        conn = await asyncpg.connect(self._settings.pg_dsn)
        try:
            return await load_mqtt_connections(conn)
        finally:
            await conn.close()

    async def _apply_mqtt(self, connections: list[MqttConnection]) -> dict[str, Any]:
        """Start, reconfigure or stop only the MQTT shards whose connection changed."""
        async with self._apply_lock:
            wanted = {f"{MQTT_SHARD_PREFIX}{c.connection_id}-{i}": (c, i)
                      for c in connections for i in range(c.subscribers)}
            current = {c.name: c for c in self._children.values() if c.role == "mqtt-shard"}
            calls: list[Awaitable[None]] = []
            added, changed = [], []
            for name, spec in sorted(wanted.items()):
                child = current.get(name)
                if child is None:
                    child = self._children[name] = Child(name, "mqtt-shard", MqttShard, mqtt=spec)
                    calls.append(self._launch(child))
                    added.append(name)
                elif child.mqtt != spec:
                    child.mqtt = spec
                    calls.append(self._reconfigure_mqtt(child))
                    changed.append(name)
            removed = sorted(current.keys() - wanted.keys())
            for name in removed:
                calls.append(self._stop_mqtt(self._children.pop(name)))
            await asyncio.gather(*calls)
            return self._reconciled("mqtt", added, removed, changed)

    async def _reconfigure_mqtt(self, child: Child) -> None:
        try:
            assert child.handle is not None and child.mqtt is not None
            await asyncio.wait_for(child.handle.configure.remote(*child.mqtt), PING_TIMEOUT_S)
            child.started += 1
        except (ray.exceptions.RayActorError, asyncio.TimeoutError, AssertionError) as err:
            log.warning("%s did not take its new configuration (%s); the watcher will replace it", child.name, err)

    async def _stop_mqtt(self, child: Child) -> None:
        """A removed connection's subscriber ends its broker session too (nothing queues for it any more)."""
        if child.handle is None:
            return
        try:
            await asyncio.wait_for(child.handle.stop.remote(forget_session=True), STOP_TIMEOUT_S)
        except (ray.exceptions.RayActorError, asyncio.TimeoutError) as err:
            log.warning("%s did not stop cleanly: %s", child.name, err)
        ray.kill(child.handle, no_restart=True)

    async def _apply(self, connections: list[ModbusConnection]) -> dict[str, Any]:
        async with self._apply_lock:
            before = {c.connection_id: c for ch in self._shards() for c in ch.assignment}
            wanted = {c.connection_id: c for c in connections}
            self._placement = place(self._placement, {cid: polls_per_s(c) for cid, c in wanted.items()},
                                    [ch.name for ch in self._shards()], self._settings.connections_per_shard,
                                    self._settings.shard_max_polls_per_s)
            by_shard: dict[str, list[ModbusConnection]] = defaultdict(list)
            for cid in sorted(wanted):
                by_shard[self._placement[cid]].append(wanted[cid])
            calls: list[Awaitable[None]] = []
            for name in sorted(set(by_shard) | {ch.name for ch in self._shards()}, key=_shard_index):
                assignment = by_shard.get(name, [])
                child = self._children.get(name)
                if child is None:
                    child = self._children[name] = Child(name, "modbus-shard", ModbusShard, assignment)
                    calls.append(self._launch(child))
                elif assignment != child.assignment:
                    child.assignment = assignment
                    calls.append(self._reassign(child))
            await asyncio.gather(*calls)
            self._reconciles += 1
            changed = sorted(cid for cid in wanted.keys() & before.keys() if wanted[cid] != before[cid])
            return self._reconciled("modbus", sorted(wanted.keys() - before.keys()),
                                    sorted(before.keys() - wanted.keys()), changed, shards_called=len(calls))

    def _reconciled(self, source: str, added: list[str], removed: list[str], changed: list[str],
                    **extra: Any) -> dict[str, Any]:
        """The summary of a reconcile of `source` (modbus, partners, mqtt); one that changed something is
        also kept for `status`, logged and audited."""
        change = {"added": added, "removed": removed, "changed": changed}
        summary = {"at": time.time(), **change, **extra}
        if added or removed or changed:
            self._last_change[source] = summary
            log.info("%s reconciled: %s", source, summary)
            self._audit.emit(audit.RECONFIGURED, SUPERVISOR_NAME, "supervisor", source=source, **change)
        return summary

    async def _reassign(self, child: Child) -> None:
        try:
            assert child.handle is not None
            call: Any = child.handle.assign.remote(child.assignment)
            result: dict[str, int] = await asyncio.wait_for(call, PING_TIMEOUT_S)
            child.started += result["started"]
            child.stopped += result["stopped"]
        except (ray.exceptions.RayActorError, asyncio.TimeoutError, AssertionError) as err:
            # The watcher replaces a dead shard, and its replacement starts with this new assignment.
            log.warning("%s did not take its new assignment (%s); the watcher will replace it", child.name, err)

    def _shards(self) -> list[Child]:
        return [c for c in self._children.values() if c.role == "modbus-shard"]

    async def _listen(self) -> None:
        """LISTEN for configuration changes; reconnect after a lost connection (the timer covers the gap)."""
        while True:
            lost = asyncio.Event()
            conn = None
            try:
                conn = await asyncpg.connect(self._settings.pg_dsn,
                                             server_settings={"application_name": LISTEN_APPLICATION_NAME})
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CONFIG_CHANNEL, lambda *_: self._wake.set())
                await conn.add_listener(partner_repo.CHANNEL, lambda *_: self._wake.set())
                self._wake.set()  # whatever changed while nobody listened
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), LISTEN_CHECK_S)
                    except asyncio.TimeoutError:
                        await conn.fetchval("SELECT 1", timeout=LISTEN_CHECK_S)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("configuration listener lost (%s); reconnecting", err)
            finally:
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(1.0)

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._settings.reconcile_interval_s)
                await asyncio.sleep(RECONCILE_DEBOUNCE_S)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.reconcile()
            except Exception as err:  # PostgreSQL away: the next signal or tick tries again
                log.warning("reconcile failed: %s", err)

    async def _launch(self, child: Child) -> None:
        child.handle = await create_named(child.actor_class, child.name, self._settings.ray_namespace,
                                          self._settings, child.name, resources=ingestion_request(self._settings))
        if child.role == "modbus-shard":
            result = await child.handle.assign.remote(child.assignment)
            child.started += result["started"]
            child.stopped += result["stopped"]
        elif child.role == "partner":
            configured: dict[str, int] = await child.handle.configure.remote(child.config)
            child.started += configured["started"]
            child.stopped += configured["stopped"]
        elif child.role == "mqtt-shard" and child.mqtt is not None:
            await child.handle.configure.remote(*child.mqtt)
            child.started += 1
        else:
            await child.handle.start.remote()
        self._audit.emit(audit.ACTOR_STARTED, child.name, child.role, restarts=child.restarts,
                         connections=[c.connection_id for c in child.assignment])

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
        self._audit.emit(audit.ACTOR_RESTARTED, child.name, child.role, reason=reason, restarts=child.restarts)
        try:
            async with self._apply_lock:  # a reconcile in flight must not hand it an old assignment
                if self._children.get(child.name) is not child:
                    return  # removed meanwhile (an MQTT connection deleted): nothing to replace
                await self._launch(child)
        except Exception as err:  # the next watch round tries again
            log.error("could not restart %s: %s", child.name, err)

    async def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "uptime_s": round(time.time() - self._started_at, 1),
            "reconciles": self._reconciles,
            "last_change": self._last_change.get("modbus", {}),
            "last_partner_change": self._last_change.get("partners", {}),
            "partner_problems": self._partner_problems,
            "last_mqtt_change": self._last_change.get("mqtt", {}),
            "children": {
                c.name: {"role": c.role, "connections": len(c.assignment), "restarts": c.restarts,
                         "connection_ids": [x.connection_id for x in c.assignment]
                         + ([c.mqtt[0].connection_id] if c.mqtt else []),
                         "started": c.started, "stopped": c.stopped, "last_ping": c.last_ping,
                         **({"version": c.version} if c.role == "partner" else {})}
                for c in self._children.values()
            },
        }

    async def handles(self, role: str) -> list[ActorHandle]:
        return [c.handle for c in self._children.values() if c.role == role and c.handle is not None]

    async def shutdown(self) -> None:
        for task in [self._watcher, *self._background]:
            if task is not None:
                task.cancel()
        # Children flush their producers on stop; one that hangs must not hold the others up.
        stops: list[Awaitable[Any]] = [
            asyncio.wait_for(c.handle.stop.remote(), STOP_TIMEOUT_S) for c in self._children.values() if c.handle]
        await asyncio.gather(*stops, return_exceptions=True)
        for c in self._children.values():
            if c.handle is not None:
                ray.kill(c.handle, no_restart=True)
                self._audit.emit(audit.ACTOR_STOPPED, c.name, c.role)
        await self._audit.close()
