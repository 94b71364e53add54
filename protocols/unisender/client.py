"""The Unisender Go HTTP client: `POST <base>/email/send.json` with `X-API-KEY` (external_apis.md §3.1).

Every failure leaves as a typed protocols.upstream error (wire.parse_error); none carries the key.
"""
from __future__ import annotations

import json

from protocols.unisender.wire import SEND_PATH, SERVICE, Email, Sent, parse_error, parse_sent, send_body
from protocols.upstream import UpstreamClient

MAX_ANSWER_BYTES = 1 << 20  # a send answer is a few hundred bytes


class UnisenderClient(UpstreamClient):
    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 10.0) -> None:
        super().__init__(SERVICE, parse_error, timeout_s=timeout_s, max_body_bytes=MAX_ANSWER_BYTES,
                         headers={"X-API-KEY": api_key, "Accept": "application/json"})
        self._url = base_url.rstrip("/") + SEND_PATH

    async def send(self, email: Email) -> Sent:
        """Send one e-mail. Retrying with the same `email.idempotence_key` never sends it twice (§3.2)."""
        body = json.dumps(send_body(email), ensure_ascii=False).encode()
        raw = await self.post(self._url, body, "the answer is larger than any send answer",
                              headers={"Content-Type": "application/json"})
        return parse_sent(raw)
