"""The open-loop load generator of `meterray bench api` (bench/api_load.py): requests leave on the
timetable whatever the answers do, latency counts from the scheduled time (a queue shows, coordinated
omission does not hide it), and a request left unanswered is an error, not a missing sample."""
from __future__ import annotations

import asyncio
import time

from bench.api_load import percentile, run_open_loop


def test_requests_leave_on_the_timetable_whatever_the_answers() -> None:
    sent_at: list[float] = []

    async def slow(i: int) -> int:
        sent_at.append(time.perf_counter())
        await asyncio.sleep(0.3)  # 15x the interval between requests: a closed loop would send 4 a second
        return 200

    r = asyncio.run(run_open_loop(slow, rate=50, seconds=1.0, timeout_s=5.0))
    assert (r["sent"], r["ok"], r["errors"]) == (50, 50, 0)
    assert 0.9 <= sent_at[-1] - sent_at[0] < 3.0  # one at a time would take 15 s
    assert r["p50_ms"] >= 300


def test_latency_counts_from_the_scheduled_time_so_a_queue_shows() -> None:
    lock = asyncio.Lock()

    async def one_at_a_time(i: int) -> int:  # a server of 20 requests/s offered 50/s for 1 s
        async with lock:
            await asyncio.sleep(0.05)
        return 200

    r = asyncio.run(run_open_loop(one_at_a_time, rate=50, seconds=1.0, timeout_s=10.0))
    assert r["ok"] == 50
    # The last request waits behind ~30 others: about 1.5 s from its scheduled time (50 ms from its own start).
    assert r["p99_ms"] >= 1000
    assert r["drain_s"] >= 1.0


def test_unanswered_requests_and_failures_are_errors() -> None:
    async def hangs_or_fails(i: int) -> int:
        if i % 2:
            raise ConnectionResetError("reset by peer")
        await asyncio.sleep(5)
        return 200

    r = asyncio.run(run_open_loop(hangs_or_fails, rate=20, seconds=0.5, timeout_s=0.2))
    assert (r["sent"], r["ok"], r["errors"]) == (10, 0, 10)
    assert r["error_kinds"] == {"timeout": 5, "ConnectionResetError": 5}
    assert r["p99_ms"] is None


def test_shed_requests_are_counted_apart_from_errors() -> None:
    async def shed_every_other(i: int) -> int:
        return 503 if i % 2 else 200

    r = asyncio.run(run_open_loop(shed_every_other, rate=40, seconds=0.5, timeout_s=1.0))
    assert (r["ok"], r["shed_503"], r["errors"]) == (10, 10, 0)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert percentile([], 99) is None
