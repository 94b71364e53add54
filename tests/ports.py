"""Every port a test run listens on, from one table, so two modules can never pick the same one.

A run's ports are METERRAY_TEST_SIM_PORT (default 16020) plus an offset below BLOCK: two checkouts testing
on one machine need bases at least BLOCK apart. A simulator's HTTP control port is one below its first
Modbus port (simulators/modbus_sim.py), and counts as one of its ports here. The table is checked on import:
no two entries share a port.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

BASE = int(os.environ.get("METERRAY_TEST_SIM_PORT", "16020"))
BLOCK = 100


@dataclass(frozen=True)
class Ports:
    offset: int  # the first port (a simulator's first Modbus port)
    count: int = 1  # how many from there
    control: bool = False  # a simulator: its control port is one below

    def span(self) -> range:
        return range(self.offset - self.control, self.offset + self.count)


TABLE: dict[str, Ports] = {
    "simulator": Ports(0, 4, control=True),  # the session's: tests/conftest.py SIM_PORTS
    "unisender-client": Ports(4),  # tests/protocols/unisender
    "notifications-sim": Ports(6, 1, control=True),  # tests/pipeline/test_notifications.py
    "demo-metrics": Ports(7),  # the demo's own runtime (tests/meterray/app/test_demo_start.py)
    "unisender": Ports(8),  # the runtime's notifier sends here (a test starts the fake)
    "fakes-protocols": Ports(10, 2),  # fake api-fns and open-gkh (tests/fakes.py), tests/protocols
    "fakes-users": Ports(12, 2),  # the same, tests/serve_apps/test_users_api.py
    "reconfigure-sim": Ports(40, 2, control=True),
    "connections-sim": Ports(46, 1, control=True),
    "connections-closed": Ports(48),  # nothing listens here
    "node-loss-sim": Ports(60, 2, control=True),
    "audit-closed": Ports(70),  # nothing listens here
    "ops-sim": Ports(74, 1, control=True),
    "haproxy-bench-sim": Ports(86, 1, control=True),  # tests/serve_apps/test_haproxy_ingress.py
    "partner-sim": Ports(80),
    "partner-sim-2": Ports(81),
    "demo-partners": Ports(82),
    "backfill-partner": Ports(83),
    "haproxy-orphan": Ports(90),  # tests/meterray/app/test_orphaned_haproxy.py: a left-behind HAProxy's API port
    "haproxy-other": Ports(91),  # the same: another runtime's, left alone
}


def port(name: str) -> int:
    return BASE + TABLE[name].offset


def _check() -> None:
    owner: dict[int, str] = {}
    for name, ports in TABLE.items():
        for p in ports.span():
            if not -1 <= p < BLOCK - 1:  # the session simulator's control port is the base's neighbour below
                raise ValueError(f"test port {name} (+{p}) is outside the block of {BLOCK}")
            if p in owner:
                raise ValueError(f"test ports {owner[p]} and {name} share +{p}")
            owner[p] = name


_check()
