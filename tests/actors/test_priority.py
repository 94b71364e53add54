"""The ClickHouse writer's process yields the CPU: every thread it has, and every thread it starts
later, runs at the niceness asked for; its background merge threads, found by name, run at SCHED_IDLE
and nothing else does (checked in a process of its own, as the kernel reports it)."""
from __future__ import annotations

import json
import subprocess
import sys

from meterray.settings import REPO_ROOT

_PROBE = """
import ctypes, json, os, threading, time
from actors.priority import idle_threads, lower_priority

def nice(tid):
    with open(f"/proc/self/task/{tid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])  # field 19: nice

def policy(tid):
    return {os.SCHED_OTHER: "other", os.SCHED_IDLE: "idle"}.get(os.sched_getscheduler(tid), "?")

def named(name, stop):
    ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME: the kernel's thread name, as chDB sets it
    stop.wait()

stop = threading.Event()
early = threading.Thread(target=named, args=("MergeMutate", stop)); early.start()  # started before: set by the call
lower_priority(7)
late = [threading.Thread(target=named, args=(n, stop)) for n in ("BgSchPool", "ThreadPool")]  # inherit it
for t in late: t.start()
time.sleep(0.1)
changed = [idle_threads(), idle_threads()]  # the second finds nothing left to change
threads = {}
for tid in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{tid}/comm") as f:
        threads[tid] = [f.read().strip(), nice(int(tid)), policy(int(tid))]
print(json.dumps({"changed": changed, "threads": threads}))
stop.set()
"""


def test_every_thread_runs_at_the_niceness_asked_and_only_merges_at_sched_idle() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=REPO_ROOT,
                         check=True, timeout=60)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    threads = result["threads"].values()
    assert len(threads) >= 4  # the main thread and the three others
    assert {n for _, n, _ in threads} == {7}, threads
    assert sorted(name for name, _, p in threads if p == "idle") == ["BgSchPool", "MergeMutate"], threads
    assert {p for name, _, p in threads if name not in ("BgSchPool", "MergeMutate")} == {"other"}, threads
    assert result["changed"] == [2, 0]
