"""Load shedding of the monitoring API on the real Serve proxy, replica and PostgreSQL (meters streaming):
far past what it takes on, every request is answered at once — 200, or 503 with Retry-After — none
hangs, and the API serves normally right after.

The monitoring app is deployed a second time beside the session's, with small limits (2 requests in the
replica, 2 queued at the proxy), so that a burst of a few hundred requests is far past its capacity on
any machine; the limits are the settings every deployment uses (serve_apps.capacity)."""
from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import pytest

from meterray.settings import Settings
from tests.auth_headers import bearer
from tests.conftest import wait_for

PREFIX = "/capacity-probe"
BURST = 300  # requests sent at once: 75x what the probe app takes on (2 ongoing + 2 queued)
ANSWER_WITHIN_S = 10.0  # a request unanswered this long counts as hanging (issue 8: "hang for minutes")


@pytest.fixture(scope="module")
def small_api(runtime: dict) -> str:
    from ray import serve

    from serve_apps.monitoring.app import build_app

    settings: Settings = runtime["settings"].model_copy(update={
        "api_max_ongoing_requests": 2, "api_max_queued_requests": 2, "api_retry_after_s": 1})
    serve.run(build_app(settings), name="capacity-probe", route_prefix=PREFIX, blocking=False)
    url = f"{runtime['api']}{PREFIX}"
    device = runtime["manifest"][0]["device_id"]

    async def one() -> int:
        async with aiohttp.ClientSession(headers=bearer(settings)) as s:
            async with s.get(f"{url}/api/v1/devices/{device}/readings/current") as r:
                await r.read()
                return r.status

    wait_for(lambda: asyncio.run(one()) == 200, 120, "the probe app to serve a meter's current readings")
    yield url
    serve.delete("capacity-probe")


async def _burst(url: str, device: str, headers: dict[str, str], n: int) -> list[tuple[int, str | None, float]]:
    """`n` requests at once; (status or 0 when unanswered, Retry-After, seconds to the answer) each."""
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=0)) as s:
        async def one() -> tuple[int, str | None, float]:
            t0 = time.perf_counter()
            try:
                async with s.get(f"{url}/api/v1/devices/{device}/readings/current",
                                 timeout=aiohttp.ClientTimeout(total=ANSWER_WITHIN_S)) as r:
                    await r.read()
                    return r.status, r.headers.get("Retry-After"), time.perf_counter() - t0
            except asyncio.TimeoutError:
                return 0, None, time.perf_counter() - t0

        return list(await asyncio.gather(*(one() for _ in range(n))))


def test_past_capacity_requests_are_shed_at_once_and_the_api_recovers(runtime: dict, small_api: str) -> None:
    settings: Settings = runtime["settings"]
    device = runtime["manifest"][0]["device_id"]
    headers = bearer(settings)

    answers = asyncio.run(_burst(small_api, device, headers, BURST))
    statuses = Counter(status for status, _, _ in answers)
    assert statuses[0] == 0, f"{statuses[0]} of {BURST} requests unanswered after {ANSWER_WITHIN_S:.0f} s"
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] > 0, f"nothing shed: {statuses}"  # unbounded queueing answers everything late, with 200
    assert statuses[200] >= 2, statuses  # the replica kept serving what it had taken on
    assert {ra for status, ra, _ in answers if status == 503} == {"1"}, "every 503 says when to retry"

    # Right after, one request at a time: served as usual.
    after = asyncio.run(_sequential(small_api, device, headers, 20))
    assert after == [200] * 20


async def _sequential(url: str, device: str, headers: dict[str, str], n: int) -> list[int]:
    async with aiohttp.ClientSession(headers=headers) as s:
        out = []
        for _ in range(n):
            async with s.get(f"{url}/api/v1/devices/{device}/readings/current",
                             timeout=aiohttp.ClientTimeout(total=ANSWER_WITHIN_S)) as r:
                await r.read()
                out.append(r.status)
        return out
