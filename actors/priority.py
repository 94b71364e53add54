"""CPU priority of an actor's process, for work that may wait while people's requests may not.

On one machine every process shares the same cores. The ClickHouse writer's INSERTs (chDB runs
ClickHouse inside that process, merges included) come in bursts of a few hundred milliseconds of CPU
on several threads; beside them the API's p99 at 200 requests/s was 128–184 ms, and 20–31 ms without
them (bench api, 2 cores). A higher niceness lets the kernel's scheduler give the CPU to the API
replica and the operational path first, while the writer still gets whatever is left: nothing waits
for the analytics copy. On Linux niceness belongs to each thread, and a thread starts with its
creator's, so every thread alive now is set and those started later inherit it.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def lower_priority(niceness: int) -> None:
    """Set this process's threads to `niceness` (0: leave them as they are). Raising niceness needs no
    privilege; a refusal is logged, never fatal."""
    if niceness <= 0:
        return
    try:
        tasks = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: the call sets the whole process
        tasks = [0]
    for tid in tasks:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except OSError as err:  # a thread that ended meanwhile, or a platform that refuses
            log.debug("niceness %d for thread %d: %s", niceness, tid, err)
