"""CPU priority of an actor's process, for work that may wait while people's requests may not.

On one machine every process shares the same cores. The ClickHouse writer's INSERTs (chDB runs
ClickHouse inside that process, merges included) come in bursts of a few hundred milliseconds of CPU
on several threads; beside them the API's p99 at 200 requests/s was 128–184 ms, and 20–31 ms without
them (bench api, 2 cores). A higher niceness lets the kernel's scheduler give the CPU to the API
replica and the operational path first, while the writer still gets whatever is left: nothing waits
for the analytics copy. Niceness alone is weighed per thread, and chDB's merge threads together still
outweighed a replica's one; SCHED_IDLE leaves the writer only the CPU nobody else wants (p99 of the
two paths 12/29 and 22/22 ms against 22/49 and 52/63 ms at niceness 10, runs in pairs). On Linux both
belong to each thread, and a thread starts with its creator's, so every thread alive now is set and
those started later inherit them.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def lower_priority(niceness: int, idle: bool = False) -> None:
    """Set this process's threads to `niceness` (0: leave them as they are) and, with `idle`, to the
    SCHED_IDLE policy: they run only on a core nothing else wants, and any other thread that wakes takes
    the core from them at once. Both need no privilege; a refusal is logged, never fatal."""
    if niceness <= 0 and not idle:
        return
    try:
        tasks = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: the call sets the whole process
        tasks = [0]
    for tid in tasks:
        try:
            if niceness > 0:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
            if idle:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except (OSError, AttributeError) as err:  # a thread that ended meanwhile, or a platform without it
            log.debug("niceness %d idle %s for thread %d: %s", niceness, idle, tid, err)
