"""CPU priority of an actor's process, for work that may wait while people's requests may not.

On one machine every process shares the same cores. The ClickHouse writer's INSERTs (chDB runs
ClickHouse inside that process, merges included) come in bursts of a few hundred milliseconds of CPU
on several threads; beside them the API's p99 at 200 requests/s was 128–184 ms, and 20–31 ms without
them (bench api, 2 cores). A higher niceness lets the kernel's scheduler give the CPU to the API
replica and the operational path first, while the writer still gets whatever is left: nothing waits
for the analytics copy. On Linux niceness belongs to each thread, and a thread starts with its
creator's, so every thread alive now is set and those started later inherit it.

Niceness is weighed per thread, though, and chDB's background merge threads together outweighed a
replica's one thread. Merges are work nobody waits for: `idle_threads` puts them at SCHED_IDLE, where
they run only on a core nothing else wants and yield it at once to any thread that wakes. The writer's
own threads are not: they INSERT and answer the aggregate API, which must not starve on a busy machine.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

# chDB's background pools (ClickHouse thread names): merges and the schedules that start them.
BACKGROUND_THREADS = ("MergeMutate", "BgSchPool", "BgStrmSchPool")


def lower_priority(niceness: int) -> None:
    """Set this process's threads to `niceness` (0: leave them as they are). Raising niceness needs no
    privilege; a refusal is logged, never fatal."""
    if niceness <= 0:
        return
    for tid in _threads():
        try:
            os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except OSError as err:  # a thread that ended meanwhile, or a platform that refuses
            log.debug("niceness %d for thread %d: %s", niceness, tid, err)


def idle_threads(prefixes: tuple[str, ...] = BACKGROUND_THREADS) -> int:
    """Put this process's threads whose name starts with one of `prefixes` at SCHED_IDLE; returns how many
    changed. Cheap enough to call after every batch: pools start threads as they need them."""
    changed = 0
    for tid in _threads():
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
            if name.startswith(prefixes) and os.sched_getscheduler(tid) != os.SCHED_IDLE:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
                changed += 1
        except (OSError, AttributeError) as err:  # a thread that ended meanwhile, or not Linux
            log.debug("SCHED_IDLE for thread %d: %s", tid, err)
    return changed


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: the calls set the whole process
        return [0]
