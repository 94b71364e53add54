"""The Unisender Go HTTP client: `POST <base>/email/send.json` with `X-API-KEY` (external_apis.md §3.1).

Every failure leaves as a typed protocols.upstream error (wire.parse_error); none carries the key.
"""
from __future__ import annotations

import asyncio
import json

import aiohttp

from protocols.http.client import retry_after_s
from protocols.unisender.wire import SEND_PATH, SERVICE, Email, Sent, parse_error, parse_sent, send_body
from protocols.upstream import Unavailable

MAX_ANSWER_BYTES = 1 << 20  # a send answer is a few hundred bytes


class UnisenderClient:
    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 10.0) -> None:
        self._base = base_url.rstrip("/")
        self._key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "UnisenderClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def send(self, email: Email) -> Sent:
        """Send one e-mail. Retrying with the same `email.idempotence_key` never sends it twice (§3.2)."""
        headers = {"X-API-KEY": self._key, "Content-Type": "application/json", "Accept": "application/json"}
        body = json.dumps(send_body(email), ensure_ascii=False).encode()
        try:
            async with self._http().post(f"{self._base}{SEND_PATH}", data=body, headers=headers) as resp:
                raw = await resp.content.read(MAX_ANSWER_BYTES + 1)
                if len(raw) > MAX_ANSWER_BYTES:
                    raise Unavailable(SERVICE, "the answer is larger than any send answer")
                if resp.status != 200:
                    raise parse_error(resp.status, raw, retry_after_s(resp.headers.get("Retry-After")))
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            raise Unavailable(SERVICE, f"no answer ({type(err).__name__})") from None
        return parse_sent(raw)
