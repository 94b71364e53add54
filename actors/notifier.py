"""Notifier: consumer group of `device-events` that tells the people of a device's organisation.

For each event: its kind (meterray.notify.kind_of), the device's organisation, its users, the rule for
the kind (the organisation's own or the platform's default) narrowed by each user's preferences, then
throttling per device and kind. One transaction per batch writes the event's record, the throttle state,
the in-app notifications and the e-mail outbox rows; only then are the offsets committed
(actors.consumer_stage). Every row has the event's identity in its key, so a redelivered event creates
nothing new. The outbox sender (actors.outbox_sender) runs beside it and is woken after each batch.
"""
from __future__ import annotations

import html
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import asyncpg
import ray
from confluent_kafka import Message

from actors import metrics
from actors.consumer_stage import ConsumerStage, StageHost
from actors.outbox_sender import OutboxSender
from meterray.domain import DeviceEvent
from meterray.notify import (
    Channel,
    Kind,
    Recipient,
    Rule,
    ThrottleState,
    channels_for,
    effective_rules,
    email_backend,
    email_warnings,
    event_key,
    idempotence_key,
    kind_of,
    render,
    throttle,
)
from meterray.settings import Settings
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer
from storage.postgres import notify as repo

log = logging.getLogger(__name__)

GROUP_ID = "meterray-notifier"


@dataclass(slots=True)
class Plan:
    """What a batch of events decided: the rows to write."""
    events: list[repo.EventRow] = field(default_factory=list)
    notifications: list[repo.NotificationRow] = field(default_factory=list)
    outbox: list[repo.OutboxRow] = field(default_factory=list)
    suppressed_after: Counter[str] = field(default_factory=Counter)


def plan(items: Sequence[tuple[DeviceEvent, Kind]], owners: Mapping[str, repo.Owner],
         people: Mapping[Any, list[Recipient]], defaults: Sequence[Rule], own: Mapping[Any, Mapping[Kind, Rule]],
         state: dict[tuple[str, str], ThrottleState], seen: set[str], now_ms: int, settings: Settings) -> Plan:
    """Pure: the rows for `items` (in stream order), updating `state` and `seen` in place."""
    out = Plan()
    window_ms, max_age_ms = settings.notify_throttle_s * 1000, settings.notify_max_event_age_s * 1000
    for event, kind in items:
        key, owner = event_key(event), owners[event.device_id]
        if key in seen:
            continue
        org = owner.organisation_id
        rule = effective_rules(defaults, own.get(org, {})).get(kind)
        told = [(u, ch) for u in people.get(org, []) if (ch := channels_for(rule, u))]
        if not told:
            continue  # nobody to tell: nothing recorded, nothing throttled
        seen.add(key)
        ts = datetime.fromtimestamp(event.ts_ms / 1000, tz=timezone.utc)
        if now_ms - event.ts_ms > max_age_ms:
            out.events.append(repo.EventRow(key, event.device_id, org, kind.value, ts, "too_old"))
            continue
        decision, state[(event.device_id, kind.value)] = throttle(state.get((event.device_id, kind.value)), key,
                                                                  event.ts_ms, window_ms)
        if not decision.notify:
            out.events.append(repo.EventRow(key, event.device_id, org, kind.value, ts, "suppressed"))
            if decision.previous_key:
                out.suppressed_after[decision.previous_key] += 1
            continue
        out.events.append(repo.EventRow(key, event.device_id, org, kind.value, ts, "notified"))
        message = render(kind, event, owner.name, ts.strftime("%Y-%m-%d %H:%M:%S"), decision.suppressed_before)
        body_html = "".join(f"<p>{html.escape(line)}</p>" for line in message.body.splitlines())
        for user, channels in told:
            if Channel.IN_APP in channels:
                out.notifications.append(repo.NotificationRow(user.user_id, org, key, kind.value, event.device_id,
                                                              message.title, message.body, ts))
            if Channel.EMAIL in channels:
                out.outbox.append(repo.OutboxRow(idempotence_key(user.user_id, key), key, user.user_id, user.email,
                                                 f"meterray: {message.title}", message.body, body_html))
    return out


class NotifierCore(ConsumerStage):
    role = "notifier"
    max_batch = 500

    def __init__(self, settings: Settings, pool: asyncpg.Pool, producer: AsyncProducer, member: str,
                 consumer_config: Mapping[str, Any] | None = None) -> None:
        backend = email_backend(settings)  # raises in production without a Unisender key: never a silent fallback
        super().__init__(settings, GROUP_ID, topics.DEVICE_EVENTS, member, producer, consumer_config)
        self._settings, self._pool = settings, pool
        self._sender = OutboxSender(settings, pool, backend)
        self._warnings = email_warnings(backend)
        for warning in self._warnings:
            log.warning("DEVELOPMENT FALLBACK: %s", warning)
        self.notified = self.suppressed = self.in_app = self.emails_queued = 0

    async def start(self) -> None:
        await super().start()
        await self._sender.start()

    async def stop(self) -> None:
        await super().stop()
        await self._sender.stop()

    async def ping(self) -> dict[str, object]:
        self._sender.check()
        return {**await super().ping(), "events_notified": self.notified, "events_suppressed": self.suppressed,
                "notifications": self.in_app, "emails_queued": self.emails_queued, **self._sender.stats(),
                "fallbacks": self._warnings}

    async def handle(self, messages: Sequence[Message]) -> None:
        items: list[tuple[DeviceEvent, Kind]] = []
        refused: list[tuple[Message, str]] = []
        for m in messages:
            try:
                event = codec.decode_event(m.value() or b"")
            except (ValueError, KeyError, TypeError) as err:
                refused.append((m, f"not a device event: {type(err).__name__}: {err}"))
                continue
            kind = kind_of(event)
            if kind is not None:
                items.append((event, kind))
        await self.send_dead_letters(refused)
        if not items:
            return
        async with self._pool.acquire() as conn:
            owners = await repo.owners(conn, (e.device_id for e, _ in items))
            items = [(e, k) for e, k in items if e.device_id in owners]
            if not items:
                return
            orgs = {o.organisation_id for o in owners.values()}
            people = await repo.recipients(conn, orgs)
            defaults, own = await repo.rules(conn, orgs)
            async with conn.transaction():
                # Locked first: a second notifier on the same device (a zombie after a rebalance) waits here.
                state = await repo.lock_throttle(conn, ((e.device_id, k.value) for e, k in items))
                seen = await repo.seen(conn, [event_key(e) for e, _ in items])
                before = dict(state)
                rows = plan(items, owners, people, defaults, own, state, seen, int(time.time() * 1000),
                            self._settings)
                changed = {k: v for k, v in state.items() if before.get(k) != v}
                await repo.write_batch(conn, rows.events, changed, rows.notifications, rows.outbox,
                                       dict(rows.suppressed_after))
        for (kind_name, outcome), n in Counter((e.kind, e.outcome) for e in rows.events).items():
            metrics.count(metrics.notifications(), n, kind=kind_name, outcome=outcome)
        self.notified += sum(1 for e in rows.events if e.outcome == "notified")
        self.suppressed += sum(1 for e in rows.events if e.outcome == "suppressed")
        self.in_app += len(rows.notifications)
        self.emails_queued += len(rows.outbox)
        if rows.outbox:
            self._sender.wake()


@ray.remote(num_cpus=0, max_restarts=0)
class Notifier(StageHost):
    """Ray actor around NotifierCore; the supervisor recreates it when it dies."""

    core_class = NotifierCore
