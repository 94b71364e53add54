"""`POST /api/v1/notifications/unisender-webhook`: Unisender Go's delivery statuses (external_apis.md §3.6).

Not behind a bearer token (Unisender cannot log in): the body's `auth` field proves the sender, the MD5
of the raw body with `auth` replaced by our API key. A body that does not verify is refused 403 and
changes nothing; Unisender resends what got no 2xx, and applying an event twice changes nothing either.
Unisender checks the URL with a GET when the webhook is activated: answered 200.
"""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from protocols.unisender.wire import WebhookError, status_events, verify
from serve_apps.deps import Db
from serve_apps.notifications.schemas import WebhookOut
from storage.postgres import notify_cabinet as repo

router = APIRouter(prefix="/unisender-webhook", tags=["notifications"])

MAX_BODY_BYTES = 1 << 20  # up to 100 events a call (single_event=0), each well under a kilobyte

_key: str | None = None  # per replica (the app is shipped by value)


def configure_webhook(api_key: str) -> None:
    global _key
    _key = api_key


@router.get("", summary="Unisender's activation check")
async def activation() -> dict[str, str]:
    return {"status": "ok"}


@router.post("", response_model=WebhookOut, summary="delivery statuses from Unisender Go (auth-signed)")
async def webhook(request: Request, db: Db) -> WebhookOut:
    if not _key:
        raise HTTPException(403, "the webhook is not configured: METERRAY_UNISENDER_API_KEY is not set")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise HTTPException(413, f"a webhook body is at most {MAX_BODY_BYTES} bytes")
    try:
        doc = verify(raw, _key)
    except WebhookError as err:
        raise HTTPException(403 if "does not match" in str(err) else 400, f"refused: {err}") from None
    try:
        events = status_events(doc)
    except WebhookError as err:
        raise HTTPException(400, f"refused: {err}") from None
    fresh, updated = await repo.apply_delivery_events(
        db, [repo.DeliveryEvent(e.job_id, e.email, e.status, e.event_time, e.detail) for e in events])
    return WebhookOut(events=fresh, updated=updated)
