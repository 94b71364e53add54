"""`/api/v1/notifications`: the caller's own in-app notifications and channel preferences. Every route
authenticates and touches only the caller's rows: someone else's notification by id is a 404."""
from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from serve_apps.auth import CurrentPrincipal
from serve_apps.deps import Db
from serve_apps.notifications.schemas import (
    NotificationOut,
    NotificationPage,
    PreferencesIn,
    PreferencesOut,
    ReadAllOut,
)
from storage.postgres import notify_cabinet as repo

router = APIRouter(tags=["notifications"])

_CURSOR = re.compile(r"^([01])\.([0-9]{1,18})$")
MAX_ID = 2**62


def _out(n: repo.Notification) -> NotificationOut:
    return NotificationOut(id=n.id, kind=n.kind, device_id=n.device_id, title=n.title, body=n.body,
                           event_ts=n.event_ts, created_at=n.created_at, read=n.read_at is not None,
                           read_at=n.read_at, suppressed=n.suppressed)


def _cursor(value: str) -> tuple[bool, int]:
    m = _CURSOR.fullmatch(value)
    if m is None:
        raise HTTPException(422, "invalid cursor: pass the `next_cursor` of the previous page unchanged, or omit "
                                 "`cursor` for the first page")
    return m.group(1) == "1", int(m.group(2))


@router.get("/", response_model=NotificationPage, summary="the caller's notifications, unread first")
async def list_notifications(
    who: CurrentPrincipal, db: Db,
    limit: Annotated[int, Query(ge=1, le=200, description="page size")] = 50,
    cursor: Annotated[str | None, Query(max_length=40, description="`next_cursor` of the previous page")] = None,
    unread_only: Annotated[bool, Query(description="only unread notifications")] = False,
) -> NotificationPage:
    """Keyset paging on (read, id): a notification arriving meanwhile does not shift the pages already
    seen (it is on the first page of a new listing); one marked read meanwhile moves to the read part."""
    rows = await repo.page(db, who.user_id, limit + 1, _cursor(cursor) if cursor else None, unread_only)
    shown = rows[:limit]
    last = shown[-1] if shown else None
    next_cursor = f"{int(last.read_at is not None)}.{last.id}" if last is not None and len(rows) > limit else None
    return NotificationPage(notifications=[_out(n) for n in shown], unread=await repo.unread_count(db, who.user_id),
                            next_cursor=next_cursor)


@router.post("/read-all", response_model=ReadAllOut, summary="mark every notification of the caller read")
async def read_all(who: CurrentPrincipal, db: Db) -> ReadAllOut:
    return ReadAllOut(marked_read=await repo.mark_all_read(db, who.user_id))


@router.post("/{notification_id}/read", response_model=NotificationOut, summary="mark one notification read")
async def read_one(who: CurrentPrincipal, db: Db,
                   notification_id: Annotated[int, Path(ge=1, le=MAX_ID)]) -> NotificationOut:
    found = await repo.mark_read(db, who.user_id, notification_id)
    if found is None:
        raise HTTPException(404, f"no notification {notification_id}")
    return _out(found)


@router.get("/preferences", response_model=PreferencesOut, summary="the caller's notification channels")
async def get_preferences(who: CurrentPrincipal, db: Db) -> PreferencesOut:
    p = await repo.preferences(db, who.user_id)
    return PreferencesOut(in_app=p.in_app, email=p.email, muted_kinds=list(p.muted_kinds))


@router.put("/preferences", response_model=PreferencesOut, summary="set the caller's notification channels")
async def put_preferences(who: CurrentPrincipal, db: Db, body: PreferencesIn) -> PreferencesOut:
    p = await repo.save_preferences(db, who.user_id, repo.Preferences(body.in_app, body.email,
                                                                      tuple(k.value for k in body.muted_kinds)))
    return PreferencesOut(in_app=p.in_app, email=p.email, muted_kinds=list(p.muted_kinds))
