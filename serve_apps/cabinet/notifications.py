"""What the notifications inbox shows and changes, through the notifications API's own route functions and
queries (serve_apps/notifications/routes.py, storage/postgres/notify_cabinet.py), called in-process as
data.py does for monitoring: every one of them is scoped to the viewer's own user id, so another user's
notification (of this organisation or another) is never listed and marking it read answers "not found".
"""
from __future__ import annotations

import asyncpg
from fastapi import HTTPException

from meterray.notify import Kind
from serve_apps.cabinet.session import Viewer
from serve_apps.notifications import routes as notify_api
from serve_apps.notifications.schemas import NotificationPage, PreferencesIn, PreferencesOut
from storage.postgres import notify_cabinet as notify_repo

PAGE_SIZE = 25
KINDS = tuple(k.value for k in Kind)
# What a redirect after a form tells the page to say (role=status): nothing else is echoed.
DONE = ("read", "all", "prefs")


async def unread(db: asyncpg.Pool, viewer: Viewer) -> int:
    """The navigation's badge: the API's own count (notify_cabinet.unread_count), one query per page."""
    return await notify_repo.unread_count(db, viewer.principal.user_id)


async def inbox(db: asyncpg.Pool, viewer: Viewer, cursor: str | None) -> NotificationPage:
    """A page of the viewer's notifications, unread first, newest first (the API's keyset paging)."""
    try:
        return await notify_api.list_notifications(who=viewer.principal, db=db, limit=PAGE_SIZE, cursor=cursor,
                                                   unread_only=False)
    except HTTPException as err:  # a cursor edited by hand: the first page rather than an error page
        if err.status_code != 422 or cursor is None:
            raise
        return await notify_api.list_notifications(who=viewer.principal, db=db, limit=PAGE_SIZE, cursor=None,
                                                   unread_only=False)


async def mark_read(db: asyncpg.Pool, viewer: Viewer, notification_id: int) -> bool:
    """False when the viewer has no such notification (someone else's included): the caller's 404."""
    if not 1 <= notification_id <= notify_api.MAX_ID:  # the API's own bounds (its Path check runs over HTTP only)
        return False
    try:
        await notify_api.read_one(who=viewer.principal, db=db, notification_id=notification_id)
    except HTTPException as err:
        if err.status_code == 404:
            return False
        raise
    return True


async def mark_all_read(db: asyncpg.Pool, viewer: Viewer) -> int:
    return (await notify_api.read_all(who=viewer.principal, db=db)).marked_read


async def preferences(db: asyncpg.Pool, viewer: Viewer) -> PreferencesOut:
    return await notify_api.get_preferences(who=viewer.principal, db=db)


async def save_preferences(db: asyncpg.Pool, viewer: Viewer, in_app: bool, email: bool,
                           wanted: list[str]) -> PreferencesOut:
    """The form lists the kinds the viewer wants; the API stores the ones muted. An unknown kind raises
    pydantic's ValidationError (the API's own model), which the page shows."""
    muted = [k for k in KINDS if k not in wanted]
    unknown = [k for k in wanted if k not in KINDS]
    body = PreferencesIn.model_validate({"in_app": in_app, "email": email, "muted_kinds": muted + unknown})
    return await notify_api.put_preferences(who=viewer.principal, db=db, body=body)
