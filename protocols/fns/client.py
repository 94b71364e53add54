"""The api-fns HTTP client: `GET <base>/egr?req=<INN>&key=<key>` (external_apis.md §1.2-§1.3).

Every failure leaves as a typed protocols.upstream error; none carries the URL (the key is in its query).
"""
from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp

from protocols.fns.egr import SERVICE, Company, parse_egr, provider_error
from protocols.upstream import Unavailable

MAX_BODY_BYTES = 1 << 20  # a full egr card is a few kB; more is not the documented answer


def retry_after(headers: Mapping[str, str]) -> float | None:
    """RFC 9110 §10.2.3 Retry-After in seconds (the HTTP-date form is not used by these services)."""
    value = headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class FnsClient:
    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 10.0) -> None:
        self._base = base_url.rstrip("/")
        self._key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "FnsClient":
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

    async def egr(self, inn: str) -> Company | None:
        """The register's card of `inn`, or None when api-fns has no such organisation."""
        try:
            async with self._http().get(f"{self._base}/egr", params={"req": inn, "key": self._key}) as resp:
                raw = await resp.content.read(MAX_BODY_BYTES + 1)
                if len(raw) > MAX_BODY_BYTES:
                    raise Unavailable(SERVICE, "the answer is larger than any egr card")
                if resp.status != 200:
                    raise provider_error(resp.status, raw, retry_after(resp.headers))
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            # The type only: aiohttp's texts quote the URL, which holds the key.
            raise Unavailable(SERVICE, f"no answer ({type(err).__name__})") from None
        return parse_egr(raw)
