"""Queries of the notifier (schema `notify`, migration 0013): who hears of a device, the throttle's state,
writing notifications and e-mails for a batch of events in one transaction, and the e-mail outbox.

Devices and users are read across schemas by id (devices.devices.organisation_id, auth.users): the
notifier needs both to know whom to tell, and writes only its own schema.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from meterray.notify import Channel, Kind, Recipient, Rule, ThrottleState


@dataclass(frozen=True, slots=True)
class Owner:
    organisation_id: uuid.UUID
    name: str | None


async def owners(conn: asyncpg.Connection, device_ids: Iterable[str]) -> dict[str, Owner]:
    rows = await conn.fetch("SELECT id, name, organisation_id FROM devices.devices"
                            " WHERE id = ANY($1::text[]) AND organisation_id IS NOT NULL", list(set(device_ids)))
    return {r["id"]: Owner(r["organisation_id"], r["name"]) for r in rows}


async def recipients(conn: asyncpg.Connection, organisations: Iterable[uuid.UUID]) -> dict[uuid.UUID, list[Recipient]]:
    """The enabled users of each organisation with their channel preferences (none stored: all on)."""
    rows = await conn.fetch(
        "SELECT u.id, u.email, u.role, u.organisation_id, coalesce(p.in_app, true) AS in_app,"
        " coalesce(p.email, true) AS email_on, coalesce(p.muted_kinds, '{}') AS muted"
        " FROM auth.users u LEFT JOIN notify.preferences p ON p.user_id = u.id"
        " WHERE u.organisation_id = ANY($1::uuid[]) AND NOT u.disabled ORDER BY u.id", list(set(organisations)))
    out: dict[uuid.UUID, list[Recipient]] = {}
    for r in rows:
        out.setdefault(r["organisation_id"], []).append(
            Recipient(r["id"], r["email"], r["role"], r["in_app"], r["email_on"], frozenset(r["muted"])))
    return out


def _rule(r: asyncpg.Record) -> Rule:
    return Rule(Kind(r["kind"]), r["enabled"], frozenset(r["roles"]), frozenset(Channel(c) for c in r["channels"]))


async def rules(conn: asyncpg.Connection, organisations: Iterable[uuid.UUID]
                ) -> tuple[list[Rule], dict[uuid.UUID, dict[Kind, Rule]]]:
    """The platform's default rules, and each organisation's own (which replace the default of their kind)."""
    defaults = [_rule(r) for r in await conn.fetch("SELECT kind, enabled, roles, channels FROM notify.default_rules")]
    own: dict[uuid.UUID, dict[Kind, Rule]] = {}
    for r in await conn.fetch("SELECT organisation_id, kind, enabled, roles, channels FROM notify.rules"
                              " WHERE organisation_id = ANY($1::uuid[])", list(set(organisations))):
        own.setdefault(r["organisation_id"], {})[Kind(r["kind"])] = _rule(r)
    return defaults, own


async def seen(conn: asyncpg.Connection, keys: Sequence[str]) -> set[str]:
    rows = await conn.fetch("SELECT event_key FROM notify.events WHERE event_key = ANY($1::text[])", list(keys))
    return {r["event_key"] for r in rows}


async def lock_throttle(conn: asyncpg.Connection, pairs: Iterable[tuple[str, str]]
                        ) -> dict[tuple[str, str], ThrottleState]:
    """The throttle rows of (device, kind), locked until the transaction ends (in a transaction only)."""
    keys = sorted(set(pairs))
    devices, kinds = [d for d, _ in keys], [k for _, k in keys]
    rows = await conn.fetch(
        "SELECT t.device_id, t.kind, (extract(epoch FROM t.window_until) * 1000)::bigint AS until_ms,"
        " t.last_event_key, t.suppressed, t.suppressed_total"
        " FROM notify.throttle t JOIN unnest($1::text[], $2::text[]) AS k(device_id, kind)"
        " ON (t.device_id, t.kind) = (k.device_id, k.kind) ORDER BY t.device_id, t.kind FOR UPDATE OF t",
        devices, kinds)
    return {(r["device_id"], r["kind"]): ThrottleState(r["until_ms"], r["last_event_key"], r["suppressed"],
                                                       r["suppressed_total"]) for r in rows}


@dataclass(frozen=True, slots=True)
class EventRow:
    key: str
    device_id: str
    organisation_id: uuid.UUID
    kind: str
    ts: datetime
    outcome: str  # notified | suppressed | too_old


@dataclass(frozen=True, slots=True)
class NotificationRow:
    user_id: uuid.UUID
    organisation_id: uuid.UUID
    event_key: str
    kind: str
    device_id: str
    title: str
    body: str
    event_ts: datetime


@dataclass(frozen=True, slots=True)
class OutboxRow:
    idempotence_key: uuid.UUID
    event_key: str
    user_id: uuid.UUID
    email: str
    subject: str
    body_plain: str
    body_html: str


async def write_batch(conn: asyncpg.Connection, events: Sequence[EventRow],
                      throttle: dict[tuple[str, str], ThrottleState], notifications: Sequence[NotificationRow],
                      outbox: Sequence[OutboxRow], suppressed_after: dict[str, int]) -> None:
    """Everything one batch of events decided, idempotently (every insert skips what exists)."""
    await conn.executemany(
        "INSERT INTO notify.events (event_key, device_id, organisation_id, kind, ts, outcome)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_key) DO NOTHING",
        [(e.key, e.device_id, e.organisation_id, e.kind, e.ts, e.outcome) for e in events])
    await conn.executemany(
        "INSERT INTO notify.throttle (device_id, kind, window_until, last_event_key, suppressed, suppressed_total)"
        " VALUES ($1, $2, to_timestamp($3 / 1000.0), $4, $5, $6) ON CONFLICT (device_id, kind) DO UPDATE SET"
        " window_until = EXCLUDED.window_until, last_event_key = EXCLUDED.last_event_key,"
        " suppressed = EXCLUDED.suppressed, suppressed_total = EXCLUDED.suppressed_total",
        [(d, k, s.window_until_ms, s.last_event_key, s.suppressed, s.suppressed_total)
         for (d, k), s in throttle.items()])
    await conn.executemany(
        "INSERT INTO notify.notifications (user_id, organisation_id, event_key, kind, device_id, title, body, event_ts)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (user_id, event_key) DO NOTHING",
        [(n.user_id, n.organisation_id, n.event_key, n.kind, n.device_id, n.title, n.body, n.event_ts)
         for n in notifications])
    await conn.executemany(
        "INSERT INTO notify.email_outbox (idempotence_key, event_key, user_id, email, subject, body_plain, body_html)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (idempotence_key) DO NOTHING",
        [(o.idempotence_key, o.event_key, o.user_id, o.email, o.subject, o.body_plain, o.body_html) for o in outbox])
    await conn.executemany(
        "UPDATE notify.notifications SET suppressed = suppressed + $2 WHERE event_key = $1",
        list(suppressed_after.items()))


# The outbox.

@dataclass(frozen=True, slots=True)
class Outgoing:
    id: int
    idempotence_key: uuid.UUID
    email: str
    subject: str
    body_plain: str
    body_html: str
    attempts: int  # including this one


async def claim_due(pool: asyncpg.Pool, limit: int, lease_s: float) -> list[Outgoing]:
    """Pending e-mails whose time has come, leased for `lease_s` (attempts counted now): a sender that
    dies mid-send leaves them to be tried again after the lease, with the same idempotence key."""
    rows = await pool.fetch(
        "UPDATE notify.email_outbox o SET attempts = o.attempts + 1,"
        " next_attempt_at = now() + make_interval(secs => $2)"
        " FROM (SELECT id FROM notify.email_outbox WHERE status = 'pending' AND next_attempt_at <= now()"
        "       ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED) due"
        " WHERE o.id = due.id"
        " RETURNING o.id, o.idempotence_key, o.email, o.subject, o.body_plain, o.body_html, o.attempts",
        limit, lease_s)
    return [Outgoing(r["id"], r["idempotence_key"], r["email"], r["subject"], r["body_plain"], r["body_html"],
                     r["attempts"]) for r in sorted(rows, key=lambda r: r["id"])]


async def next_due_in_s(pool: asyncpg.Pool) -> float | None:
    """Seconds until the next pending e-mail is due (0 when one is), None when none is pending."""
    value = await pool.fetchval("SELECT greatest(0, extract(epoch FROM min(next_attempt_at) - now()))::float8"
                                " FROM notify.email_outbox WHERE status = 'pending'")
    return None if value is None else float(value)


async def settle(pool: asyncpg.Pool, outbox_id: int, status: str, *, job_id: str | None = None,
                 error: str | None = None) -> None:
    """A final outcome: sent (with Unisender's job id), logged, rejected or failed. The last error is kept
    (a sent e-mail shows what its earlier attempts met)."""
    await pool.execute(
        "UPDATE notify.email_outbox SET status = $2, job_id = coalesce($3, job_id),"
        " last_error = coalesce($4, last_error),"
        " sent_at = CASE WHEN $2 IN ('sent', 'logged') THEN now() ELSE sent_at END WHERE id = $1",
        outbox_id, status, job_id, error)


async def retry_later(pool: asyncpg.Pool, outbox_id: int, delay_s: float, error: str) -> None:
    await pool.execute("UPDATE notify.email_outbox SET next_attempt_at = now() + make_interval(secs => $2),"
                       " last_error = $3 WHERE id = $1 AND status = 'pending'", outbox_id, delay_s, error)
