"""The partner client against the partner simulator (in this process): each kind of credential,
OAuth2 token renewal, 429 + Retry-After, retried 500s, typed failures, the rate budget."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from meterray.domain import FailureKind
from meterray.partners import validate_partner
from protocols.http.client import HttpFailure, PartnerClient, RateBudget, retry_after_s
from protocols.http.paging import Window, build_request
from simulators.partner_api import Faults, Sim, build_app, device_ids

READINGS = {"device": "meter", "timestamp": "time", "quantity": "quantity", "value": "value"}


@pytest.fixture
async def sim() -> AsyncIterator[tuple[Sim, str]]:
    s = Sim(device_ids(2), 1000, "k3y", "cid", "csecret", "u", "pw", Faults())
    server = TestServer(build_app(s), host="127.0.0.1")
    await server.start_server()
    yield s, f"http://127.0.0.1:{server.port}"
    await server.close()


def _client(base: str, auth: dict[str, Any], **extra: Any) -> tuple[PartnerClient, Any]:
    c = validate_partner({"partner_id": "p", "base_url": base, "auth": auth, **extra, "paths": [
        {"name": "r", "url": "/api/json/none/readings", "query": {"since": "{since_ms}", "until": "{until_ms}"},
         "readings": READINGS}]})
    now = int(time.time() * 1000)
    return PartnerClient(c), build_request(base, c.paths[0], Window(now - 3000, now), {})


@pytest.mark.parametrize("auth", [
    {"kind": "api_key", "key": "k3y"},
    {"kind": "api_key", "where": "query", "name": "api_key", "key": "k3y"},
    {"kind": "basic", "username": "u", "password": "pw"},
    {"kind": "oauth2", "token_url": "TOKEN", "client_id": "cid", "client_secret": "csecret"},
])
async def test_each_kind_of_credential_is_accepted(sim: tuple[Sim, str], auth: dict[str, Any]) -> None:
    s, base = sim
    if auth.get("token_url") == "TOKEN":
        auth = {**auth, "token_url": f"{base}/oauth/token"}
    client, req = _client(base, auth)
    try:
        resp = await client.fetch(req, RateBudget(6000))
    finally:
        await client.close()
    assert resp.status == 200 and b'"meter":"m-0001"' in resp.body and s.stats["unauthorized"] == 0


async def test_wrong_credentials_are_an_auth_failure_not_retried(sim: tuple[Sim, str]) -> None:
    s, base = sim
    client, req = _client(base, {"kind": "api_key", "key": "wrong"}, retries=3)
    with pytest.raises(HttpFailure) as info:
        await client.fetch(req, RateBudget(6000))
    await client.close()
    assert info.value.kind is FailureKind.AUTH and not info.value.retriable and s.stats["requests"] == 1
    assert "wrong" not in str(info.value)
    client, req = _client(base, {"kind": "oauth2", "token_url": f"{base}/oauth/token", "client_id": "cid",
                                 "client_secret": "nope"})
    with pytest.raises(HttpFailure) as info:
        await client.fetch(req, RateBudget(6000))
    await client.close()
    assert info.value.kind is FailureKind.AUTH and "refused the client credentials" in str(info.value)


async def test_an_expired_or_revoked_token_is_renewed(sim: tuple[Sim, str]) -> None:
    s, base = sim
    client, req = _client(base, {"kind": "oauth2", "token_url": f"{base}/oauth/token", "client_id": "cid",
                                 "client_secret": "csecret"})
    try:
        await client.fetch(req, RateBudget(6000))
        s.tokens.clear()  # the partner forgets the token before its announced expiry
        assert (await client.fetch(req, RateBudget(6000))).status == 200
        assert client.stats["token_fetches"] == 2 and client.stats["unauthorized"] == 1
        s.faults.token_ttl_s = 1.0  # short-lived tokens: renewed ahead of expiry, no 401 needed
        client._token = None
        await client.fetch(req, RateBudget(6000))
        time.sleep(1.0)
        assert (await client.fetch(req, RateBudget(6000))).status == 200
        assert client.stats["token_fetches"] == 4 and client.stats["unauthorized"] == 1
    finally:
        await client.close()


async def test_429_pauses_for_retry_after_and_500s_are_retried_then_fail_typed(sim: tuple[Sim, str]) -> None:
    s, base = sim
    client, req = _client(base, {"kind": "api_key", "key": "k3y"}, retries=2)
    s.faults.throttle_every, s.faults.retry_after_s = 1, 1.0
    budget = RateBudget(6000)
    started = time.monotonic()

    async def lift() -> None:
        s.faults.throttle_every = 0

    import asyncio

    loop = asyncio.get_running_loop()
    loop.call_later(0.5, lambda: asyncio.ensure_future(lift()))
    resp = await client.fetch(req, budget)
    assert resp.status == 200 and s.stats["throttled"] >= 1 and time.monotonic() - started >= 1.0
    s.faults.error_every = 1
    with pytest.raises(HttpFailure) as info:
        await client.fetch(req, budget)
    await client.close()
    assert info.value.kind is FailureKind.BAD_RESPONSE and info.value.status == 500
    assert client.stats["retries"] == 2 and "after 3 attempts" in str(info.value)


async def test_a_slow_page_times_out_typed(sim: tuple[Sim, str]) -> None:
    s, base = sim
    s.faults.slow_every, s.faults.slow_s = 1, 2.0
    client, req = _client(base, {"kind": "api_key", "key": "k3y"}, retries=0, timeout_s=0.3)
    with pytest.raises(HttpFailure) as info:
        await client.fetch(req, RateBudget(6000))
    await client.close()
    assert info.value.kind is FailureKind.TIMEOUT and info.value.retriable


async def test_the_rate_budget_paces_requests() -> None:
    budget = RateBudget(120)  # 2 per second, bursts of 2
    started = time.monotonic()
    for _ in range(6):
        await budget.acquire()
    assert time.monotonic() - started >= 1.9


def test_retry_after_seconds_or_http_date() -> None:
    from email.utils import formatdate

    assert retry_after_s("7") == 7.0 and retry_after_s(None) is None and retry_after_s("soon") is None
    later = retry_after_s(formatdate(time.time() + 30, usegmt=True))
    assert later is not None and 25 <= later <= 31


async def test_a_failure_never_quotes_a_secret() -> None:
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:  # a partner that quotes the request in its error
        return web.Response(status=400, text=f"bad request: {request.query_string}")

    app = web.Application()
    app.router.add_get("/api/json/none/readings", echo)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client, req = _client(f"http://127.0.0.1:{server.port}", {"kind": "api_key", "where": "query", "name": "api_key",
                                                               "key": "very-s3cret"}, retries=0)
    try:
        with pytest.raises(HttpFailure) as info:
            await client.fetch(req, RateBudget(6000))
    finally:
        await client.close()
        await server.close()
    assert info.value.status == 400 and "api_key=***" in str(info.value) and "very-s3cret" not in str(info.value)
