"""Typed failures of the external services the users service calls (api-fns, the supply-contract check),
and the one GET both clients make.

Clients translate every library error and every documented error answer into one of these, once, at
their boundary. Messages never quote a request URL, header or key (api-fns takes its key in the query
string, so an aiohttp error's text would carry it).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Self

import aiohttp

from protocols.http.client import retry_after_s


class UpstreamError(Exception):
    """A provider failure: nothing is known about the thing asked for. `retriable`: the same request may
    succeed later (outage, rate limit); otherwise it needs an operator (bad key, quota)."""

    retriable = False

    def __init__(self, service: str, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.message = message
        self.retry_after_s = retry_after_s


class BadKey(UpstreamError):
    """The key is refused (wrong, expired, or not allowed from this IP address)."""


class QuotaExhausted(UpstreamError):
    """The paid period's quota of this method is spent."""


class RateLimited(UpstreamError):
    retriable = True


class Unavailable(UpstreamError):
    """Timeout, connection refused, 5xx, or an answer that is not the documented format."""

    retriable = True


class InvalidRequest(UpstreamError):
    """The provider refuses what we asked (a malformed value): the caller's input, not an outage."""


class UpstreamClient:
    """One lazily opened aiohttp session and the one request every call of these services is: the body of a
    200 answer, or a typed error (a provider's own error answer through `provider_error`)."""

    def __init__(self, service: str, provider_error: Callable[[int, bytes, float | None], UpstreamError], *,
                 timeout_s: float, max_body_bytes: int, headers: Mapping[str, str] | None = None) -> None:
        self._service = service
        self._provider_error = provider_error
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_body = max_body_bytes
        self._headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self._session

    async def get(self, url: str, params: Mapping[str, str], too_large: str) -> bytes:
        """The body of `GET url?params`; `too_large` says what an answer over the size limit cannot be."""
        return await self._request("GET", url, too_large, params=params)

    async def post(self, url: str, body: bytes, too_large: str, headers: Mapping[str, str] | None = None) -> bytes:
        """The body of `POST url` with `body` (and these headers besides the client's own)."""
        return await self._request("POST", url, too_large, data=body, headers=headers)

    async def _request(self, method: str, url: str, too_large: str, *, params: Mapping[str, str] | None = None,
                       data: bytes | None = None, headers: Mapping[str, str] | None = None) -> bytes:
        try:
            async with self._http().request(method, url, params=params, data=data, headers=headers) as resp:
                raw = await resp.content.read(self._max_body + 1)
                if len(raw) > self._max_body:
                    raise Unavailable(self._service, too_large)
                if resp.status != 200:
                    raise self._provider_error(resp.status, raw, retry_after_s(resp.headers.get("Retry-After")))
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            # The type only: aiohttp's texts quote the URL, which may hold the key (api-fns takes it in the query).
            raise Unavailable(self._service, f"no answer ({type(err).__name__})") from None
        return raw
