"""Moving a partner's bytes: aiohttp, a rate budget, authentication and retries.

Failures are typed at this one boundary (`HttpFailure` with a FailureKind and a `retriable` flag),
so the actor can tell a timeout from a refused key. A 429 or 503 with `Retry-After` (RFC 9110
§10.2.3: seconds or an HTTP date) pauses every request to the partner until then; 5xx, timeouts and
lost connections are retried with jittered backoff up to `retries` times; a 401 with OAuth2 fetches a
new token once (it may have expired early) before it counts as an authentication failure.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson

from meterray.backoff import Backoff
from meterray.domain import FailureKind
from meterray.partners import ApiKeyAuth, BasicAuth, OAuth2Auth, PartnerConfig
from protocols.http.paging import PageRequest

MAX_RETRY_AFTER_S = 600.0  # a partner asking for a longer pause is waited on in steps of this
MAX_THROTTLED = 50  # 429s in a row for one page: then it counts as a failed page (the run resumes later)
TOKEN_EARLY_S = 0.1  # a token is renewed this fraction of its lifetime before it expires


class HttpFailure(Exception):
    def __init__(self, kind: FailureKind, detail: str, retriable: bool, status: int | None = None) -> None:
        super().__init__(detail)
        self.kind, self.retriable, self.status = kind, retriable, status


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    url: str


class RateBudget:
    """A token bucket of `per_minute` requests (bursts up to one second's worth, at least one), plus
    a shared pause set by the partner's Retry-After."""

    def __init__(self, per_minute: float, pause: "Pause | None" = None) -> None:
        self._rate = per_minute / 60.0
        self._burst = max(1.0, self._rate)
        self._tokens = self._burst
        self._at = time.monotonic()
        self._lock = asyncio.Lock()
        self.pause = pause or Pause()

    async def acquire(self) -> None:
        async with self._lock:
            await self.pause.wait()
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
            self._at = now
            if self._tokens < 1.0:
                await asyncio.sleep((1.0 - self._tokens) / self._rate)
                self._tokens, self._at = 1.0, time.monotonic()
            self._tokens -= 1.0


class Pause:
    """Until when the partner asked us to wait (monotonic clock); shared by a partner's budgets."""

    def __init__(self) -> None:
        self.until = 0.0

    def set(self, seconds: float) -> None:
        self.until = max(self.until, time.monotonic() + min(seconds, MAX_RETRY_AFTER_S))

    async def wait(self) -> None:
        while (left := self.until - time.monotonic()) > 0:
            await asyncio.sleep(left)


class PartnerClient:
    def __init__(self, config: PartnerConfig) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._token_until = 0.0
        self._token_lock = asyncio.Lock()
        self.stats = {"requests": 0, "retries": 0, "throttled": 0, "server_errors": 0, "token_fetches": 0,
                      "unauthorized": 0}

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._config.timeout_s),
                connector=aiohttp.TCPConnector(limit=8))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, req: PageRequest, budget: RateBudget) -> Response:
        """One page; retried as the module says. Raises HttpFailure when it cannot be had; its text never
        holds a secret (an error may quote a URL with the API key in its query, or an echoed header)."""
        try:
            return await self._fetch(req, budget)
        except HttpFailure as err:
            text = str(err)
            for secret in self._config.secrets().values():
                text = text.replace(secret, "***")
            raise HttpFailure(err.kind, text, err.retriable, err.status) from None

    async def _fetch(self, req: PageRequest, budget: RateBudget) -> Response:
        backoff = Backoff(base_s=0.2, cap_s=10.0)
        refreshed = False
        attempt = throttled = 0
        while True:
            await budget.acquire()
            try:
                resp = await self._once(req)
            except HttpFailure as err:
                if not err.retriable or attempt >= self._config.retries:
                    raise
                attempt += 1
                self.stats["retries"] += 1
                await asyncio.sleep(backoff.next_delay())
                continue
            if resp.status == 401 and isinstance(self._config.auth, OAuth2Auth) and not refreshed:
                self._token, refreshed = None, True  # expired early or revoked: one fresh token, then give up
                self.stats["unauthorized"] += 1
                continue
            if resp.status in (401, 403):
                raise HttpFailure(FailureKind.AUTH, f"HTTP {resp.status} from {_where(req.url)}: credentials refused",
                                  False, resp.status)
            if resp.status == 429 or resp.status >= 500:
                wait = retry_after_s(resp.headers.get("Retry-After"))
                if resp.status == 429:
                    self.stats["throttled"] += 1
                    throttled += 1
                    if throttled >= MAX_THROTTLED:
                        raise HttpFailure(FailureKind.BAD_RESPONSE, f"HTTP 429 from {_where(req.url)} {throttled} "
                                          "times in a row", True, 429)
                    budget.pause.set(wait if wait is not None else backoff.next_delay())
                    continue  # a 429 is the partner's pacing, not a failure: it never uses up the retries
                self.stats["server_errors"] += 1
                if wait is not None:
                    budget.pause.set(wait)
                if attempt >= self._config.retries:
                    raise HttpFailure(FailureKind.BAD_RESPONSE, f"HTTP {resp.status} from {_where(req.url)} after "
                                      f"{attempt + 1} attempts", True, resp.status)
                attempt += 1
                self.stats["retries"] += 1
                await asyncio.sleep(0 if wait is not None else backoff.next_delay())
                continue
            if resp.status >= 400:
                raise HttpFailure(FailureKind.BAD_RESPONSE, f"HTTP {resp.status} from {_where(req.url)}: "
                                  f"{resp.body[:200].decode(errors='replace')}", False, resp.status)
            return resp

    async def _once(self, req: PageRequest) -> Response:
        headers, params = dict(req.headers), dict(req.params)
        auth = self._config.auth
        basic = None
        if isinstance(auth, ApiKeyAuth):
            (headers if auth.where == "header" else params)[auth.name] = auth.key.get_secret_value()
        elif isinstance(auth, BasicAuth):
            basic = aiohttp.BasicAuth(auth.username, auth.password.get_secret_value())
        elif isinstance(auth, OAuth2Auth):
            headers["Authorization"] = f"Bearer {await self._bearer(auth)}"
        session = await self._http()
        self.stats["requests"] += 1
        try:
            async with session.request(req.method, req.url, params=params or None, headers=headers,
                                       auth=basic) as r:
                body = await r.read()
                return Response(r.status, {k: v for k, v in r.headers.items()}, body, str(r.url))
        except asyncio.TimeoutError:
            raise HttpFailure(FailureKind.TIMEOUT, f"no answer from {_where(req.url)} within "
                              f"{self._config.timeout_s:g} s", True) from None
        except aiohttp.ClientConnectorError as err:
            raise HttpFailure(FailureKind.CONNECTION_REFUSED, f"cannot connect to {_where(req.url)} "
                              f"({err.os_error or err})", True) from None
        except (aiohttp.ClientError, OSError) as err:
            raise HttpFailure(FailureKind.CONNECTION_LOST, f"{_where(req.url)}: {type(err).__name__}: {err}",
                              True) from None

    async def _bearer(self, auth: OAuth2Auth) -> str:
        async with self._token_lock:
            if self._token is None or time.monotonic() >= self._token_until:
                self._token, lifetime = await self._fetch_token(auth)
                self._token_until = time.monotonic() + lifetime * (1 - TOKEN_EARLY_S)
            return self._token

    async def _fetch_token(self, auth: OAuth2Auth) -> tuple[str, float]:
        """RFC 6749 §4.4.2: POST grant_type=client_credentials, client authenticated with HTTP basic."""
        form = {"grant_type": "client_credentials", **({"scope": auth.scope} if auth.scope else {})}
        session = await self._http()
        self.stats["token_fetches"] += 1
        try:
            async with session.post(auth.token_url, data=form,
                                    auth=aiohttp.BasicAuth(auth.client_id, auth.client_secret.get_secret_value())) as r:
                body = await r.read()
                status = r.status
        except asyncio.TimeoutError:
            raise HttpFailure(FailureKind.TIMEOUT, f"token endpoint {_where(auth.token_url)} did not answer",
                              True) from None
        except (aiohttp.ClientError, OSError) as err:
            raise HttpFailure(FailureKind.CONNECTION_REFUSED, f"token endpoint {_where(auth.token_url)}: {err}",
                              True) from None
        if status in (400, 401, 403):
            raise HttpFailure(FailureKind.AUTH, f"token endpoint {_where(auth.token_url)} refused the client "
                              f"credentials (HTTP {status})", False, status)
        if status >= 300:
            raise HttpFailure(FailureKind.BAD_RESPONSE, f"token endpoint answered HTTP {status}", status >= 500,
                              status)
        try:
            doc: Any = orjson.loads(body)
            token, lifetime = str(doc["access_token"]), float(doc.get("expires_in") or 3600)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise HttpFailure(FailureKind.BAD_RESPONSE, "token endpoint answer has no access_token", False) from None
        return token, lifetime


def retry_after_s(value: str | None) -> float | None:
    """RFC 9110 §10.2.3: delay-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _where(url: str) -> str:
    """A URL without its query: API keys in the query must not reach logs or failure details."""
    return url.split("?", 1)[0]
