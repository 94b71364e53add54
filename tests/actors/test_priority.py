"""The ClickHouse writer's process yields the CPU: every thread it has, and every thread it starts
later, runs at the niceness and scheduling policy asked for (checked in a process of its own, as the
kernel reports them)."""
from __future__ import annotations

import json
import subprocess
import sys

from meterray.settings import REPO_ROOT

_PROBE = """
import json, os, threading, time
from actors.priority import lower_priority

def nice(tid):
    with open(f"/proc/self/task/{tid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])  # field 19: nice

def policy(tid):
    return {os.SCHED_OTHER: "other", os.SCHED_IDLE: "idle"}.get(os.sched_getscheduler(tid), "?")

stop = threading.Event()
early = threading.Thread(target=stop.wait); early.start()  # started before: set by the call
lower_priority(NICENESS, IDLE)
late = threading.Thread(target=stop.wait); late.start()  # started after: inherits it
time.sleep(0.1)
print(json.dumps({t: [nice(int(t)), policy(int(t))] for t in os.listdir("/proc/self/task")}))
stop.set()
"""


def _threads(niceness: int, idle: bool) -> dict[str, list[object]]:
    probe = f"NICENESS, IDLE = {niceness}, {idle}\n{_PROBE}"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT,
                         check=True, timeout=60)
    threads: dict[str, list[object]] = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(threads) >= 3  # the main thread and both others
    return threads


def test_every_thread_before_and_after_runs_at_the_niceness_asked() -> None:
    threads = _threads(7, False)
    assert {(n, p) for n, p in threads.values()} == {(7, "other")}, threads


def test_every_thread_before_and_after_runs_idle_when_asked() -> None:
    threads = _threads(0, True)
    assert {(n, p) for n, p in threads.values()} == {(0, "idle")}, threads
    threads = _threads(10, True)
    assert {(n, p) for n, p in threads.values()} == {(10, "idle")}, threads
