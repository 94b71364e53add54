"""The ClickHouse writer's process yields the CPU: every thread it has, and every thread it starts
later, runs at the niceness asked for (checked in a process of its own, as the kernel reports it)."""
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

stop = threading.Event()
early = threading.Thread(target=stop.wait); early.start()  # started before: set by the call
lower_priority(7)
late = threading.Thread(target=stop.wait); late.start()  # started after: inherits it
time.sleep(0.1)
print(json.dumps({str(t): nice(t) for t in os.listdir("/proc/self/task")}))
stop.set()
"""


def test_every_thread_before_and_after_runs_at_the_niceness_asked() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=REPO_ROOT,
                         check=True, timeout=60)
    niceness = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(niceness) >= 3  # the main thread and both others
    assert set(niceness.values()) == {7}, niceness
