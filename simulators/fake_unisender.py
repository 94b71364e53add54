"""A local stand-in for Unisender Go (external_apis.md §3.7): `POST <base>/email/send.json` with the
documented checks and answers, its errors (401 code 102 bad key, 403 quota, 400 malformed request, 413,
429, 5xx, malformed JSON, a timeout) and `idempotence_key` honoured (a repeated key returns the first
job_id and sends nothing again); plus the webhook's callback format, signed as Unisender signs it.

Tests switch faults with `fault` (for the next `fault_calls` calls, then none again); `sent` holds every
message really accepted, once each; `calls` counts the send requests that reached it.
"""
from __future__ import annotations

import asyncio
import enum
import itertools
import json
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from protocols.unisender.wire import sign
from simulators.http_thread import ThreadedServer

BASE_PATH = "/ru/transactional/api/v1"  # as go1/go2.unisender.ru (§3.1)
MAX_BODY_BYTES = 10 * 2**20  # §3.1: at most 10 MB
# Test addresses answered with a per-recipient refusal (§3.3 failed_emails).
REFUSED_DOMAINS = {"invalid.example": "invalid", "unsubscribed.example": "unsubscribed",
                   "unavailable.example": "permanent_unavailable"}


class UnisenderFault(str, enum.Enum):
    NONE = "none"
    BAD_KEY = "bad_key"  # 401 {"status":"error","code":102,"message":"... Can not decode key ..."}
    QUOTA = "quota"  # 403, sending limit exceeded
    RATE_LIMITED = "rate_limited"  # 429 with Retry-After
    SERVER_ERROR = "server_error"  # 503, HTML body
    MALFORMED = "malformed"  # 200, truncated JSON
    ACCEPTED_THEN_ERROR = "accepted_then_error"  # sends the e-mail, then answers 502 (the answer is lost)
    TIMEOUT = "timeout"  # answers after `slow_s`


def _error(status: int, code: int, message: str, **headers: str) -> web.Response:
    body = {"status": "error", "code": code, "message": f"Error ID:00000000-0000-0000-0000-000000000000. {message}"}
    return web.json_response(body, status=status, headers=headers)


class FakeUnisender:
    def __init__(self, port: int, api_key: str, host: str = "127.0.0.1") -> None:
        self.api_key = api_key
        self.fault = UnisenderFault.NONE
        self.fault_calls: int | None = None  # None: the fault stays until reset
        self.slow_s = 30.0
        self.calls = 0
        self.sent: list[dict[str, Any]] = []  # {"job_id", "idempotence_key", "email", "subject", "metadata", ...}
        self._jobs: dict[str, dict[str, Any]] = {}  # idempotence_key → its answer
        self._ids = itertools.count(1)
        app = web.Application(client_max_size=MAX_BODY_BYTES + 1)
        app.router.add_post(f"{BASE_PATH}/email/send.json", self._send)
        self._server = ThreadedServer(app, host, port)

    @property
    def url(self) -> str:
        """The base URL a client is configured with (METERRAY_UNISENDER_URL)."""
        return f"{self._server.url}{BASE_PATH}"

    def fail(self, fault: UnisenderFault, calls: int | None = None) -> None:
        self.fault, self.fault_calls = fault, calls

    def _take_fault(self) -> UnisenderFault:
        fault = self.fault
        if fault is not UnisenderFault.NONE and self.fault_calls is not None:
            self.fault_calls -= 1
            if self.fault_calls <= 0:
                self.fault, self.fault_calls = UnisenderFault.NONE, None
        return fault

    async def _send(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        fault = self._take_fault()
        if fault is UnisenderFault.TIMEOUT:
            await asyncio.sleep(self.slow_s)
        raw = await request.read()
        if len(raw) > MAX_BODY_BYTES:
            return _error(413, 413, "Request Entity Too Large")
        try:
            doc = json.loads(raw)
        except ValueError:
            return _error(400, 101, "Can not parse JSON body")
        key = request.headers.get("X-API-KEY") or (doc.get("api_key") if isinstance(doc, dict) else None)
        if fault is UnisenderFault.BAD_KEY or key != self.api_key:
            return _error(401, 102, f"Can not decode key {key or ''}")
        if fault is UnisenderFault.QUOTA:
            return _error(403, 204, "Sending limit exceeded for this period")
        if fault is UnisenderFault.RATE_LIMITED:
            return _error(429, 429, "Too many requests", **{"Retry-After": "1"})
        if fault is UnisenderFault.SERVER_ERROR:
            return web.Response(status=503, text="<html>503 Service Temporarily Unavailable</html>",
                                content_type="text/html")
        if fault is UnisenderFault.MALFORMED:
            return web.Response(status=200, text='{"status":"success","job_id":', content_type="application/json")
        problem = _problem(doc)
        if problem:
            return _error(400, 103, problem)
        message = doc["message"]
        idem = doc.get("idempotence_key") or message.get("idempotence_key")  # §3.2: placement not verified
        answer = self._jobs.get(idem) if idem else None
        if answer is None:
            answer = self._accept(message, idem)
        if fault is UnisenderFault.ACCEPTED_THEN_ERROR:
            return _error(502, 502, "Bad Gateway")
        return web.json_response(answer)

    def _accept(self, message: dict[str, Any], idem: str | None) -> dict[str, Any]:
        job_id = f"1t{next(self._ids):05d}-0007Le-Fake"
        emails: list[str] = []
        failed: dict[str, str] = {}
        for r in message["recipients"]:
            address = r["email"]
            refusal = REFUSED_DOMAINS.get(address.rpartition("@")[2])
            if address in emails:
                failed[address] = "duplicate"
            elif refusal:
                failed[address] = refusal
                continue
            else:
                emails.append(address)
                self.sent.append({"job_id": job_id, "idempotence_key": idem, "email": address,
                                  "subject": message.get("subject"), "body": message.get("body"),
                                  "metadata": r.get("metadata") or {}})
        answer: dict[str, Any] = {"status": "success", "job_id": job_id, "emails": emails}
        if failed:
            answer["failed_emails"] = failed
        if idem:
            self._jobs[idem] = answer
        return answer

    # The webhook (§3.6): what Unisender Go POSTs to the configured URL.

    def webhook_body(self, events: list[dict[str, Any]], api_key: str | None = None) -> bytes:
        """A `single_event=0` body carrying `events` (`event_data` objects), signed with the key."""
        doc = {"events_by_user": [{"user_id": 5960727, "project_name": "meterray", "project_id": "6862471",
                                   "events": [{"event_name": "transactional_email_status", "event_data": e}
                                              for e in events]}]}
        return sign(doc, self.api_key if api_key is None else api_key)

    def status_event(self, job_id: str, email: str, status: str, when: datetime | None = None) -> dict[str, Any]:
        event: dict[str, Any] = {"job_id": job_id, "email": email, "status": status,
                                 "event_time": (when or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M:%S")}
        if status == "delivered":
            event["delivery_info"] = {"delivery_status": "ok", "destination_response": "250 2.0.0 Ok: queued"}
        job = next((s for s in self.sent if s["job_id"] == job_id and s["email"] == email), None)
        if job is not None:
            event["metadata"] = job["metadata"]
        return event

    @staticmethod
    def post_webhook(url: str, body: bytes) -> tuple[int, Any]:
        req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def start(self) -> "FakeUnisender":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()


def _problem(doc: Any) -> str | None:
    """The request checks of §3.7: recipients, from_email, a body, no spaces inside `{{ }}`."""
    message = doc.get("message") if isinstance(doc, dict) else None
    if not isinstance(message, dict):
        return "message is required"
    recipients = message.get("recipients")
    if not isinstance(recipients, list) or not recipients or not all(
            isinstance(r, dict) and isinstance(r.get("email"), str) for r in recipients):
        return "message.recipients must be a non-empty list of {email}"
    if len(recipients) > 500:
        return "at most 500 recipients"
    if message.get("template_id") is None:
        if not message.get("from_email"):
            return "message.from_email is required"
        body = message.get("body")
        if not isinstance(body, dict) or not (body.get("html") or body.get("plaintext")):
            return "message.body.html or message.body.plaintext is required"
    text = json.dumps([message.get("subject"), message.get("body")], ensure_ascii=False)
    if "{{ " in text or " }}" in text:
        return "substitutions must not have spaces inside {{ }}"
    return None
