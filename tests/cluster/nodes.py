"""A Ray cluster of several nodes on this machine, for tests: each node a `ray start --block` in a session
of its own (so stopping one stops exactly its processes: raylet, agents, workers), with its own temp
dir and ports, so it never meets the shared test cluster or another engineer's."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
READY_LINE = "will now block forever"


@dataclass
class RayNode:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def session_pids(self) -> list[int]:
        """Every process of the node: all started in the session `ray start` opened (ps -s)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                # Field 6 of /proc/<pid>/stat is the session id; the command may contain spaces and parens.
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == self.proc.pid and fields[0] != "Z":
                pids.append(int(entry.name))
        return pids

    def kill(self) -> None:
        """Abruptly, as a machine that dies: SIGKILL to every process of the node at once."""
        self.signal_all(signal.SIGKILL)

    def signal_all(self, sig: signal.Signals) -> None:
        for pid in self.session_pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout_s: float = 20.0) -> None:
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self.session_pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def start_node(name: str, tmp: Path, base_port: int, worker_ports: tuple[int, int], *, head_address: str | None,
               num_cpus: int, resources: dict[str, float], env: dict[str, str], timeout_s: float = 90.0) -> RayNode:
    """`ray start --block` with every port this node opens set explicitly (base_port .. base_port+9)."""
    temp_dir = tmp / name
    temp_dir.mkdir(parents=True, exist_ok=True)
    log = tmp / f"{name}.log"
    args = [RAY, "start", "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
            f"--resources={json.dumps(resources)}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
            f"--node-manager-port={base_port + 1}", f"--object-manager-port={base_port + 2}",
            f"--min-worker-port={worker_ports[0]}", f"--max-worker-port={worker_ports[1]}",
            f"--metrics-export-port={base_port + 4}", f"--dashboard-agent-listen-port={base_port + 5}",
            f"--dashboard-agent-grpc-port={base_port + 6}", f"--runtime-env-agent-port={base_port + 7}",
            "--object-store-memory=80000000"]
    if head_address is None:
        args += ["--head", f"--port={base_port}", f"--ray-client-server-port={base_port + 3}",
                 "--include-dashboard=false", f"--dashboard-port={base_port + 8}"]
    else:
        args += [f"--address={head_address}"]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **env})
    node = RayNode(name, proc, log)
    deadline = time.monotonic() + timeout_s
    while READY_LINE not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            node.stop()
            raise RuntimeError(f"ray node {name} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    return node
