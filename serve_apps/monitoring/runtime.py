"""The runtime as an operator sees it: one shape for `GET /api/v1/runtime` and `meterray status`.

A view is two samples of the supervisor's status (which holds each child's last ping), the consumer
groups' lag and the device-state counts, `window_s` apart: counters come from the later sample, rates
are the counters' growth between the two. A child replaced between the samples gets no rate (its
counters started again).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from pydantic import BaseModel, Field

from storage.kafka.lag import GroupLag, group_lag
from storage.postgres.devices import count_by_status

SUPERVISOR_TIMEOUT_S = 10.0
# Counters of a child's ping that get a rate, per role.
RATED = {"modbus-shard": ("polls_ok", "polls_failed", "readings", "delivered", "dead_letters"),
         "device-processor": ("messages", "dead_letters"),
         "pg-writer": ("messages", "dead_letters"),
         "backfill": ("messages", "dead_letters"),
         "notifier": ("messages", "emails_sent")}
SHOWN = {"modbus-shard": ("polls_ok", "polls_failed", "readings", "dead_letters", "overruns", "connects",
                          "buffered_records", "buffer_peak_records", "buffer_dropped_records", "delivery_failures",
                          "redelivered", "p50_ms", "p99_ms"),
         "device-processor": ("batches", "messages", "dead_letters", "sink_failures", "paused", "outage_s",
                              "rebalances", "consumer_reopened", "last_error"),
         "pg-writer": ("batches", "messages", "dead_letters", "sink_failures", "paused", "outage_s",
                       "rebalances", "consumer_reopened", "last_error"),
         "backfill": ("scans", "gaps_requested", "last_scan_at", "last_scan_ms", "last_scan_error", "messages",
                      "backfills_created", "already_asked", "dead_letters", "sink_failures", "paused", "last_error"),
         # email_sender: unisender, or log-only (development fallback: `fallbacks` says so)
         "notifier": ("batches", "messages", "dead_letters", "sink_failures", "paused", "outage_s", "last_error",
                      "events_notified", "events_suppressed", "notifications", "emails_queued", "email_sender",
                      "emails_sent", "emails_logged", "emails_rejected", "emails_failed", "email_retries",
                      "email_last_error", "fallbacks")}


@dataclass(frozen=True, slots=True)
class ConsumerGroup:
    role: str
    group: str  # as Kafka knows it (prefixed)
    topic: str


@dataclass(frozen=True, slots=True)
class RuntimeSources:
    """Where the runtime's state lives; meterray.app wires it (it knows the actors' names and groups)."""
    supervisor: str
    namespace: str
    kafka_bootstrap: str
    groups: tuple[ConsumerGroup, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    status: dict[str, Any]
    lag: tuple[GroupLag, ...]
    device_states: dict[str, int]


class ActorOut(BaseModel):
    name: str = Field(description="the actor's name in the Ray dashboard, e.g. modbus-shard-3")
    role: str
    pid: int | None
    node_id: str | None = Field(None, description="the Ray node the actor runs on (placement: README)")
    restarts: int
    connections: int = Field(description="Modbus connections assigned (shards)")
    connection_ids: list[str]
    tasks_started: int
    tasks_stopped: int
    counters: dict[str, Any] = Field(description="from the actor's last ping")
    rates_per_s: dict[str, float] | None = Field(description="counters' growth per second over the window")


class LagOut(BaseModel):
    role: str
    group: str
    topic: str
    lag: int | None
    error: str | None


class RuntimeOut(BaseModel):
    at: float
    window_s: float | None
    supervisor: dict[str, Any] = Field(description="pid, uptime_s, reconciles, last_change")
    actors: list[ActorOut]
    totals_per_s: dict[str, float] = Field(description="rates summed over the actors of each role, e.g. polls")
    lag: list[LagOut]
    device_states: dict[str, int] = Field(description="registered devices per status")
    development_fallbacks: list[str] = Field(
        default_factory=list, description="every way this deployment is weaker than production (missing API keys, "
                                          "the public development signing key); METERRAY_ENV=production refuses them")


async def take_sample(supervisor: Any, pool: asyncpg.Pool, sources: RuntimeSources) -> Sample:
    status, states, *lags = await asyncio.gather(
        asyncio.wait_for(supervisor.status.remote(), SUPERVISOR_TIMEOUT_S),
        count_by_status(pool),
        *(asyncio.to_thread(group_lag, sources.kafka_bootstrap, g.group, g.topic) for g in sources.groups))
    return Sample(time.time(), status, tuple(lags), states)


def shape(current: Sample, previous: Sample | None, groups: Sequence[ConsumerGroup] = ()) -> RuntimeOut:
    """The one shaping function: a sample (and the one before it, for rates) as the operator's view."""
    children: dict[str, dict[str, Any]] = current.status.get("children", {})
    before: dict[str, dict[str, Any]] = previous.status.get("children", {}) if previous else {}
    dt = current.at - previous.at if previous else 0.0
    actors: list[ActorOut] = []
    totals: dict[str, float] = {}
    for name in sorted(children, key=_order):
        child = children[name]
        ping, role = child.get("last_ping") or {}, child["role"]
        rates = None
        old = before.get(name)
        if old is not None and dt > 0 and old.get("restarts") == child.get("restarts"):
            old_ping = old.get("last_ping") or {}
            rates = {k: round((ping[k] - old_ping[k]) / dt, 2) for k in RATED.get(role, ())
                     if isinstance(ping.get(k), int) and isinstance(old_ping.get(k), int)}
            for k, v in rates.items():
                key = f"{role}.{k}"
                totals[key] = round(totals.get(key, 0.0) + v, 2)
        actors.append(ActorOut(
            name=name, role=role, pid=ping.get("pid"), node_id=ping.get("node_id"), restarts=child.get("restarts", 0),
            connections=child.get("connections", 0), connection_ids=child.get("connection_ids", []),
            tasks_started=child.get("started", 0), tasks_stopped=child.get("stopped", 0),
            counters={k: ping[k] for k in SHOWN.get(role, ()) if k in ping}, rates_per_s=rates))
    roles = {g.group: g.role for g in groups}
    return RuntimeOut(
        at=current.at, window_s=round(dt, 2) if previous else None,
        supervisor={k: current.status.get(k) for k in ("pid", "uptime_s", "reconciles", "last_change")},
        actors=actors, totals_per_s=totals,
        lag=[LagOut(role=roles.get(x.group, ""), group=x.group, topic=x.topic, lag=x.lag, error=x.error)
             for x in current.lag],
        device_states=current.device_states)


async def runtime_view(supervisor: Any, pool: asyncpg.Pool, sources: RuntimeSources, window_s: float) -> RuntimeOut:
    first = await take_sample(supervisor, pool, sources)
    await asyncio.sleep(window_s)
    return shape(await take_sample(supervisor, pool, sources), first, sources.groups)


def _order(name: str) -> tuple[int, str, int]:
    # Sources first, then the stages in pipeline order; modbus-shard-10 after modbus-shard-9.
    stem, _, index = name.rpartition("-")
    rank = {"modbus-shard": 0, "device-processor": 1, "pg-writer": 2, "notifier": 3}.get(stem, 4)
    return (rank, stem, int(index)) if index.isdigit() else (rank, name, -1)
