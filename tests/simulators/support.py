"""Helpers for tests that run the simulator in-process: free ports and a clock tests can move."""
from __future__ import annotations

import socket
import time


class FakeClock:
    """Wall-clock time plus an offset the test controls (counters integrate over it)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def free_port_range(n: int, start: int = 21000, stop: int = 32000, step: int = 97) -> int:
    """First port P such that P-1..P+n-1 are free on 127.0.0.1 (P-1 for the control API).

    Stays below Linux's ephemeral range (32768+), where client sockets could take the ports.
    """
    for base in range(start, stop, step):
        socks = []
        try:
            for port in range(base - 1, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n + 1} consecutive free ports in {start}..{stop}")
