"""Queries of the notifications API (schema `notify`): a user's in-app notifications (each query scoped to
the user), their channel preferences, and delivery statuses from Unisender's webhook."""
from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

# An e-mail's delivery status is the furthest it got: a status replaces one of lower rank (or the same
# rank, earlier), whatever order the events of a batch, or a resent batch, come in.
STATUS_RANK = {"sent": 1, "soft_bounced": 2, "delivered": 3, "opened": 4, "clicked": 5, "unsubscribed": 6,
               "subscribed": 6, "spam": 7, "hard_bounced": 8}


@dataclass(frozen=True, slots=True)
class Notification:
    id: int
    kind: str
    device_id: str
    title: str
    body: str
    event_ts: datetime
    created_at: datetime
    read_at: datetime | None
    suppressed: int


_COLUMNS = "id, kind, device_id, title, body, event_ts, created_at, read_at, suppressed"


async def page(db: asyncpg.Pool, user_id: uuid.UUID, limit: int, after: tuple[bool, int] | None,
               unread_only: bool = False) -> list[Notification]:
    """Unread first, newest first within each; keyset on (read, id): `after` is the last row's key."""
    read, last_id = after if after is not None else (False, 2**62)
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM notify.notifications WHERE user_id = $1"
        " AND ((read_at IS NOT NULL) > $2 OR ((read_at IS NOT NULL) = $2 AND id < $3))"
        " AND (NOT $5 OR read_at IS NULL)"
        " ORDER BY (read_at IS NOT NULL), id DESC LIMIT $4", user_id, read, last_id, limit, unread_only)
    return [Notification(**dict(r)) for r in rows]


async def unread_count(db: asyncpg.Pool, user_id: uuid.UUID) -> int:
    return int(await db.fetchval("SELECT count(*) FROM notify.notifications WHERE user_id = $1 AND read_at IS NULL",
                                 user_id))


async def mark_read(db: asyncpg.Pool, user_id: uuid.UUID, notification_id: int) -> Notification | None:
    """None when the user has no such notification (someone else's included)."""
    row = await db.fetchrow(
        f"UPDATE notify.notifications SET read_at = coalesce(read_at, now()) WHERE id = $2 AND user_id = $1"
        f" RETURNING {_COLUMNS}", user_id, notification_id)
    return None if row is None else Notification(**dict(row))


async def mark_all_read(db: asyncpg.Pool, user_id: uuid.UUID) -> int:
    result = await db.execute("UPDATE notify.notifications SET read_at = now() WHERE user_id = $1 AND read_at IS NULL",
                              user_id)
    return int(result.split()[-1])


@dataclass(frozen=True, slots=True)
class Preferences:
    in_app: bool = True
    email: bool = True
    muted_kinds: tuple[str, ...] = ()


async def preferences(db: asyncpg.Pool, user_id: uuid.UUID) -> Preferences:
    row = await db.fetchrow("SELECT in_app, email, muted_kinds FROM notify.preferences WHERE user_id = $1", user_id)
    return Preferences() if row is None else Preferences(row["in_app"], row["email"], tuple(row["muted_kinds"]))


async def save_preferences(db: asyncpg.Pool, user_id: uuid.UUID, prefs: Preferences) -> Preferences:
    await db.execute(
        "INSERT INTO notify.preferences (user_id, in_app, email, muted_kinds) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (user_id) DO UPDATE SET in_app = EXCLUDED.in_app, email = EXCLUDED.email,"
        " muted_kinds = EXCLUDED.muted_kinds, updated_at = now()",
        user_id, prefs.in_app, prefs.email, sorted(set(prefs.muted_kinds)))
    return await preferences(db, user_id)


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    job_id: str
    email: str
    status: str
    event_time: datetime
    detail: str | None


async def apply_delivery_events(db: asyncpg.Pool, events: Sequence[DeliveryEvent]) -> tuple[int, int]:
    """Record each event once ((job_id, email, status, event_time) is its identity) and move the e-mail's
    delivery status forward; returns (new events, e-mails updated)."""
    fresh = updated = 0
    async with db.acquire() as conn, conn.transaction():
        for e in events:
            inserted = await conn.fetchval(
                "INSERT INTO notify.email_events (job_id, email, status, event_time, detail)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true",
                e.job_id, e.email.lower(), e.status, e.event_time, e.detail)
            if not inserted:
                continue
            fresh += 1
            current = await conn.fetchrow(
                "SELECT id, delivery_status, delivery_at FROM notify.email_outbox WHERE job_id = $1"
                " AND lower(email) = $2 FOR UPDATE", e.job_id, e.email.lower())
            if current is None:
                continue  # not one of ours (another application on the same Unisender project)
            if current["delivery_at"] is not None and (STATUS_RANK.get(e.status, 0), e.event_time) <= (
                    STATUS_RANK.get(current["delivery_status"], 0), current["delivery_at"]):
                continue
            await conn.execute("UPDATE notify.email_outbox SET delivery_status = $2, delivery_detail = $3,"
                               " delivery_at = $4 WHERE id = $1", current["id"], e.status, e.detail, e.event_time)
            updated += 1
    return fresh, updated

