"""Unisender Go's wire format, pure (external_apis.md §3): the `email/send.json` request and answers, its
error envelope as typed failures, and the delivery-status webhook (signature and events).

Sources as the reference cites them: request shape and `idempotence_key` (v1.69) §3.2; success §3.3;
errors §3.4 (HTTP status + `{"status": "error", "code", "message"}`, possibly wrapped in a one-element
list); webhook §3.6 (`auth` = MD5 of the raw body with the `auth` value replaced by the API key).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from protocols.upstream import BadKey, InvalidRequest, QuotaExhausted, RateLimited, Unavailable, UpstreamError

SERVICE = "unisender"
SEND_PATH = "/email/send.json"
# Per-recipient refusals (§3.3 `failed_emails`); `duplicate` still sends the first copy.
REFUSALS = ("invalid", "permanent_unavailable", "temporary_unavailable", "unsubscribed")
BAD_KEY_CODE = 102  # "Can not decode key" (§3.4, L4 sample; L1's live test)
_OPEN, _CLOSE = re.compile(r"\{(?=\{)"), re.compile(r"\}(?=\})")
_KEY_IN_TEXT = re.compile(r"(key)\s+\S+", re.IGNORECASE)
_QUOTA_WORDS = re.compile(r"limit|quota|лимит|исчерпан|превышен", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Email:
    to: str
    subject: str
    plaintext: str
    html: str
    from_email: str
    from_name: str
    idempotence_key: str
    metadata: dict[str, str]


def send_body(email: Email) -> dict[str, Any]:
    """One message to one recipient, its text final (no substitutions; `plain` keeps a `{{` in a device
    name from being taken for one). `metadata` is echoed back in every webhook event (§3.6)."""
    return {
        "idempotence_key": email.idempotence_key,
        "message": {
            "recipients": [{"email": email.to, "metadata": email.metadata}],
            "subject": plain(email.subject),
            "body": {"plaintext": plain(email.plaintext), "html": plain(email.html)},
            "from_email": email.from_email,
            "from_name": email.from_name,
            "track_links": 0,
            "track_read": 0,
            "tags": ["meterray-notification"],
        },
    }


def plain(text: str) -> str:
    """`{{` opens a substitution in the simple engine (§3.2); device names and reasons are not templates."""
    return _CLOSE.sub("} ", _OPEN.sub("{ ", text))


@dataclass(frozen=True, slots=True)
class Sent:
    job_id: str
    emails: tuple[str, ...]
    failed: dict[str, str]  # address → failure code (`duplicate` excluded: its first copy is sent)


def parse_error(status: int, raw: bytes, retry_after_s: float | None) -> UpstreamError:
    """A non-200 answer as the typed failure it means (§3.4): retriable are 429, 5xx and anything that is
    not the documented envelope; 401 / code 102 a bad key; 403 a refusal of rights (quota when it says so)."""
    code, message = None, ""
    try:
        doc = json.loads(raw)
        if isinstance(doc, list) and len(doc) == 1:
            doc = doc[0]
        if isinstance(doc, dict):
            # "Can not decode key <the key>" (§3.4): the text quotes the key, which no log may carry.
            code, message = doc.get("code"), _KEY_IN_TEXT.sub(r"\1 ***", str(doc.get("message", ""))[:300])
    except ValueError:
        pass
    detail = f"HTTP {status}" + (f", code {code}" if code is not None else "") + (f": {message}" if message else "")
    if status == 429:
        return RateLimited(SERVICE, detail, retry_after_s=retry_after_s)
    if status >= 500 or status in (408,):
        return Unavailable(SERVICE, detail, retry_after_s=retry_after_s)
    if status == 401 or code == BAD_KEY_CODE:
        return BadKey(SERVICE, detail)
    if status == 403:
        return (QuotaExhausted if _QUOTA_WORDS.search(message) else BadKey)(SERVICE, detail)
    if status in (400, 404, 413):
        return InvalidRequest(SERVICE, detail)
    return Unavailable(SERVICE, detail)


def parse_sent(raw: bytes) -> Sent:
    """A 200 answer (§3.3). Anything else than the documented success is an `Unavailable` (retriable:
    the same idempotence key makes a retry safe)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise Unavailable(SERVICE, "HTTP 200 with a body that is not JSON") from None
    if isinstance(doc, list) and len(doc) == 1:
        doc = doc[0]
    if not isinstance(doc, dict):
        raise Unavailable(SERVICE, "HTTP 200 with JSON that is not an object")
    if doc.get("status") == "error":
        raise parse_error(400, raw, None)
    job_id = doc.get("job_id")
    if doc.get("status") != "success" or not isinstance(job_id, str) or not job_id:
        raise Unavailable(SERVICE, "HTTP 200 without status success and a job_id")
    failed = doc.get("failed_emails") or {}
    if not isinstance(failed, dict):
        raise Unavailable(SERVICE, "failed_emails is not an object")
    emails = doc.get("emails") or []
    return Sent(job_id, tuple(str(e) for e in emails if isinstance(e, str)),
                {str(a): str(c) for a, c in failed.items() if c != "duplicate"})


# The webhook (§3.6).

class WebhookError(ValueError):
    """A webhook call that is not Unisender's: malformed, or its `auth` does not match our key."""


@dataclass(frozen=True, slots=True)
class StatusEvent:
    job_id: str
    email: str
    status: str
    event_time: datetime  # UTC
    detail: str | None  # delivery_info.delivery_status / destination_response


def verify(raw: bytes, api_key: str) -> dict[str, Any]:
    """The parsed body, if its `auth` is the MD5 of the raw body with `auth`'s value replaced by our key.
    On the raw bytes: Unisender escapes `/` as `\\/`, a re-serialisation would not match."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise WebhookError("the body is not JSON") from None
    auth = doc.get("auth") if isinstance(doc, dict) else None
    if not isinstance(auth, str) or not re.fullmatch(r"[0-9a-f]{32}", auth):
        raise WebhookError("no auth field (32 hex digits)")
    expected = hashlib.md5(raw.replace(auth.encode(), api_key.encode())).hexdigest()
    if not hmac.compare_digest(auth, expected):
        raise WebhookError("the auth field does not match")
    assert isinstance(doc, dict)
    return doc


def sign(doc: dict[str, Any], api_key: str) -> bytes:
    """A body signed as Unisender signs it (for fakes and tests): serialised with a placeholder for
    `auth`, the placeholder replaced by the key, MD5'd, the hash put in the placeholder's place."""
    placeholder = "__unisender_go_auth_placeholder__"
    raw = json.dumps({**doc, "auth": placeholder}, ensure_ascii=False).replace("/", "\\/").encode()
    digest = hashlib.md5(raw.replace(placeholder.encode(), api_key.encode())).hexdigest()
    return raw.replace(placeholder.encode(), digest.encode())


def status_events(doc: dict[str, Any]) -> list[StatusEvent]:
    """The `transactional_email_status` events of a verified body, either format (`single_event` 0: under
    `events_by_user[].events[]`; 1: one flat object). Other event names (spam blocks) are not statuses."""
    if "events_by_user" in doc:
        raw_events = [e for u in doc.get("events_by_user") or [] if isinstance(u, dict)
                      for e in u.get("events") or [] if isinstance(e, dict)]
        pairs = [(e.get("event_name"), e.get("event_data")) for e in raw_events]
    else:
        pairs = [(doc.get("event_name"), doc)]
    out = []
    for name, data in pairs:
        if name != "transactional_email_status" or not isinstance(data, dict):
            continue
        try:
            when = datetime.strptime(str(data["event_time"]), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
            job_id, email, status = str(data["job_id"]), str(data["email"]), str(data["status"])
        except (KeyError, ValueError):
            raise WebhookError("an event without job_id, email, status and event_time (YYYY-MM-DD hh:mm:ss)") from None
        info = data.get("delivery_info")
        parts = [str(info[k]) for k in ("delivery_status", "destination_response")
                 if isinstance(info, dict) and info.get(k)]
        detail = " ".join(parts) or None
        out.append(StatusEvent(job_id, email, status, when, detail[:500] if detail else None))
    return out
