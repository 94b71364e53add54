"""The benchmark and the simulator raise their open-files limit (soft → hard) so 2,000 connections fit."""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from meterray.settings import REPO_ROOT
from protocols.modbus.client import ModbusEndpoint
from protocols.modbus.profiles import PROFILES
from tests.simulators.support import free_port_range

LOW = 256


def _low_soft_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def _hard_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def _soft_limit_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no open-files line in /proc/{pid}/limits")


def test_bench_driver_raises_its_soft_limit_to_the_hard_limit() -> None:
    code = "from bench.modbus import raise_open_files_limit as r; import json; print(json.dumps(r()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO_ROOT, preexec_fn=_low_soft_limit)
    before, after = json.loads(out.stdout)
    assert before == LOW
    assert after == _hard_limit() > LOW


async def test_simulator_raises_its_soft_limit_and_serves_more_ports_than_the_old_limit(tmp_path: Path) -> None:
    # Under the low limit pymodbus stops listening after ~LOW ports, sometimes without an error.
    ports = 2 * LOW
    base = free_port_range(ports)
    manifest = tmp_path / "manifest.json"
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulators.modbus_server", "--base-port", str(base), "--ports", str(ports),
         "--control-port", "0", "--manifest", str(manifest)],
        cwd=REPO_ROOT, preexec_fn=_low_soft_limit, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not manifest.exists():
            assert sim.poll() is None, sim.stdout.read().decode() if sim.stdout else "simulator exited"
            assert time.monotonic() < deadline, "simulator did not start within 60 s"
            time.sleep(0.1)
        assert _soft_limit_of(sim.pid) == _hard_limit()
        devices = json.loads(manifest.read_text())
        assert len(devices) == ports
        last = devices[-1]
        async with ModbusEndpoint("127.0.0.1", last["port"], timeout_s=5.0) as endpoint:
            values, _ = await endpoint.read_device(PROFILES[last["profile"]], last["unit_id"])
        assert values, f"the last port {last['port']} gave no values"
    finally:
        sim.terminate()
        sim.wait(timeout=30)
