"""A real simulator served in-process on free ports, with a clock the tests can move forward."""
from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from simulators.modbus_server import RunningSimulator, SimulatorConfig, serve
from tests.simulators.support import FakeClock, free_port_range


@pytest_asyncio.fixture(scope="module")
async def sim() -> AsyncIterator[tuple[RunningSimulator, FakeClock]]:
    clock = FakeClock()
    config = SimulatorConfig(base_port=free_port_range(2), ports=2, units=4, clock=clock)
    running = await serve(config)
    try:
        yield running, clock
    finally:
        await running.stop()
