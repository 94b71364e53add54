"""Measure the simulator: poll every meter as fast as possible, report requests/s and CPU.

    python -m simulators.loadgen --ports 100 --units 5 --duration 10

Starts `python -m simulators.modbus_server` as a child process, waits for its manifest, then
polls with one pymodbus client per port (one request in flight per port, like a gateway) and
reports the request rate and the simulator's CPU seconds per request (from /proc via psutil).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
from pymodbus.client import AsyncModbusTcpClient

from protocols.modbus.client import ModbusEndpoint, ModbusError
from protocols.modbus.planner import plan_blocks
from protocols.modbus.profiles import PROFILES


async def _poll_port(
    port: int, devices: list[dict[str, Any]], deadline: float, use_endpoint: bool, counts: dict[str, int]
) -> None:
    if use_endpoint:
        endpoint = ModbusEndpoint("127.0.0.1", port, 2.0)
        await endpoint.connect()
        try:
            while time.monotonic() < deadline:
                for d in devices:
                    try:
                        await endpoint.read_device(PROFILES[d["profile"]], d["unit_id"])
                        counts["requests"] += len(plan_blocks(PROFILES[d["profile"]]))
                    except ModbusError:
                        counts["errors"] += 1
        finally:
            await endpoint.close()
        return
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2.0, retries=0, reconnect_delay=0)
    await client.connect()
    try:
        while time.monotonic() < deadline:
            for d in devices:
                for block in plan_blocks(PROFILES[d["profile"]]):
                    rr = await client.read_input_registers(block.start, count=block.count, device_id=d["unit_id"])
                    counts["requests" if not rr.isError() else "errors"] += 1
    finally:
        client.close()


async def _load(manifest: list[dict[str, Any]], duration: float, use_endpoint: bool) -> dict[str, int]:
    by_port: dict[int, list[dict[str, Any]]] = {}
    for d in manifest:
        by_port.setdefault(d["port"], []).append(d)
    counts = {"requests": 0, "errors": 0}
    deadline = time.monotonic() + duration
    await asyncio.gather(*(_poll_port(p, ds, deadline, use_endpoint, counts) for p, ds in by_port.items()))
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simulators.loadgen", description=__doc__.split("\n")[0])
    ap.add_argument("--base-port", type=int, default=24000, help="keep below the ephemeral range (32768+)")
    ap.add_argument("--ports", type=int, default=100)
    ap.add_argument("--units", type=int, default=5)
    ap.add_argument("--profiles", default="sdm630,wb-map3e")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--endpoint", action="store_true", help="poll through ModbusEndpoint.read_device (decode too)")
    a = ap.parse_args(argv)
    manifest_path = Path(tempfile.mkdtemp()) / "manifest.json"
    cmd = [sys.executable, "-m", "simulators.modbus_server", "--base-port", str(a.base_port), "--ports",
           str(a.ports), "--units", str(a.units), "--profiles", a.profiles, "--manifest", str(manifest_path),
           "--log-level", "warning"]
    sim = subprocess.Popen(cmd)
    try:
        while not manifest_path.exists():
            if sim.poll() is not None:
                raise SystemExit(f"simulator exited with {sim.returncode}")
            time.sleep(0.05)
        manifest = json.loads(manifest_path.read_text())
        proc, me = psutil.Process(sim.pid), psutil.Process(os.getpid())
        sim_cpu0, my_cpu0, t0 = sum(proc.cpu_times()[:2]), sum(me.cpu_times()[:2]), time.monotonic()
        counts = asyncio.run(_load(manifest, a.duration, a.endpoint))
        wall = time.monotonic() - t0
        sim_cpu, my_cpu = sum(proc.cpu_times()[:2]) - sim_cpu0, sum(me.cpu_times()[:2]) - my_cpu0
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    result = {
        "meters": len(manifest), "ports": a.ports, "client": "ModbusEndpoint" if a.endpoint else "pymodbus",
        "requests": counts["requests"], "errors": counts["errors"], "wall_s": round(wall, 2),
        "requests_per_s": round(counts["requests"] / wall, 1),
        "simulator_cpu_s": round(sim_cpu, 2),
        "simulator_cpu_ms_per_request": round(1000 * sim_cpu / max(1, counts["requests"]), 3),
        "client_cpu_s": round(my_cpu, 2),
        "client_cpu_ms_per_request": round(1000 * my_cpu / max(1, counts["requests"]), 3),
        "simulator_exit_code": sim.returncode,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
