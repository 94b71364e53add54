"""Open-loop load for `meterray bench api`, in its own process: requests leave on a fixed timetable
(request i at t0 + i/rate) whatever the answers do, and each latency runs from the request's *scheduled*
time, so a server that falls behind shows its queue in the figures instead of slowing the client down
(coordinated omission, Tene). Two targets with the same timetable:

- `http`: GET <url><path> through aiohttp, with a bearer token; `{device}` in the path is replaced by
  the next device id, round robin;
- `pg`: the same query straight through asyncpg (the raw baseline): `current` is the route's one query
  (the device joined to its current readings), `list` the first page of the device list.

Prints one JSON line: sent, answered per status, errors, shed (503), p50/p99/max of the 200s and of
everything answered, and how late the generator itself sent (if it cannot keep its own timetable, the
offered rate was not offered).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

LIST_PAGE = 100  # the device list's default page (serve_apps.monitoring.routes)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


async def run_open_loop(send: Callable[[int], Awaitable[int]], rate: float, seconds: float,
                        timeout_s: float) -> dict[str, Any]:
    """Send `rate` requests a second for `seconds`; `send(i)` answers an HTTP-like status (0: failed)."""
    n = int(rate * seconds)
    statuses: Counter[int] = Counter()
    ok_ms: list[float] = []
    all_ms: list[float] = []
    late_ms: list[float] = []
    errors: Counter[str] = Counter()
    last_done = [0.0]

    async def one(i: int, scheduled: float) -> None:
        try:
            status = await asyncio.wait_for(send(i), timeout_s)
        except asyncio.TimeoutError:
            status, kind = 0, "timeout"
        except Exception as err:  # a refused connection, a reset: counted, never fatal for the run
            status, kind = 0, type(err).__name__
        done = time.perf_counter()
        last_done[0] = max(last_done[0], done)
        ms = (done - scheduled) * 1000
        statuses[status] += 1
        if status == 0:
            errors[kind] += 1
            return
        all_ms.append(ms)
        if status == 200:
            ok_ms.append(ms)

    tasks = []
    t0 = time.perf_counter() + 0.05
    for i in range(n):
        scheduled = t0 + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        late_ms.append(max(0.0, (time.perf_counter() - scheduled) * 1000))
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    window = seconds
    other = sum(c for s, c in statuses.items() if s not in (0, 200, 503))

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    return {"offered_rps": rate, "seconds": seconds, "sent": n, "ok": statuses[200],
            "achieved_rps": round(statuses[200] / window, 1),
            "p50_ms": r(percentile(ok_ms, 50)), "p99_ms": r(percentile(ok_ms, 99)),
            "max_ms": r(max(ok_ms, default=None)),
            "p99_all_ms": r(percentile(all_ms, 99)), "max_all_ms": r(max(all_ms, default=None)),
            "errors": sum(errors.values()) + other, "error_kinds": dict(errors),
            "status_counts": {str(s): c for s, c in sorted(statuses.items()) if s},
            "shed_503": statuses[503],
            "drain_s": round(max(0.0, last_done[0] - (t0 + n / rate)), 2),
            "send_late_p99_ms": r(percentile(late_ms, 99))}


async def http_target(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    devices = args.devices.split(",")
    # The API's bench token is a platform admin's (organisation None): the same scope in the same queries.
    headers = {"Authorization": f"Bearer {args.token}"}
    retry_after: Counter[str] = Counter()
    # Connections as needed (open loop); the cap only guards the machine's file descriptors.
    connector = aiohttp.TCPConnector(limit=args.connections, force_close=False)
    async with aiohttp.ClientSession(base_url=args.url, connector=connector, headers=headers) as session:
        async def send(i: int) -> int:
            path = args.path.replace("{device}", devices[i % len(devices)])
            async with session.get(path) as resp:
                await resp.read()
                if resp.status == 503:
                    retry_after[resp.headers.get("Retry-After", "none")] += 1
                return resp.status

        out = await run_open_loop(send, args.rate, args.seconds, args.timeout)
    out["retry_after"] = dict(retry_after)
    return out


async def pg_target(args: argparse.Namespace) -> dict[str, Any]:
    import asyncpg

    from storage.postgres import devices as device_repo
    from storage.postgres import readings as readings_repo

    devices = args.devices.split(",")
    pool = await asyncpg.create_pool(args.dsn, min_size=args.pool, max_size=args.pool)
    try:
        async def send(i: int) -> int:
            if args.query == "current":
                device = devices[i % len(devices)]
                if await readings_repo.current_readings(pool, device, organisation_id=None) is None:
                    return 404
            else:
                await device_repo.list_devices(pool, None, LIST_PAGE + 1, None, organisation_id=None)
            return 200

        return await run_open_loop(send, args.rate, args.seconds, args.timeout)
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("target", choices=["http", "pg"])
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--timeout", type=float, default=10.0, help="a request still unanswered after this is an error")
    p.add_argument("--devices", required=True, help="comma-separated device ids")
    p.add_argument("--url", help="http: the API's base URL")
    p.add_argument("--path", help="http: the path; {device} is replaced by a device id")
    p.add_argument("--token", help="http: the bearer token")
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--dsn", help="pg: the database")
    p.add_argument("--query", choices=["current", "list"], help="pg: which query")
    p.add_argument("--pool", type=int, default=10, help="pg: connections")
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.install()  # the client's own overhead is not what is measured
    except ImportError:
        pass
    result = asyncio.run(http_target(args) if args.target == "http" else pg_target(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
