"""The API behind HAProxy (METERRAY_API_INGRESS=haproxy: Serve's direct ingress, serve_apps/capacity.py): a
whole runtime started that way by `meterray bench api` — its own Ray, database, topics and simulator — answers
every authenticated request for a meter's current values and for the device list through HAProxy."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from meterray.settings import REPO_ROOT, Settings
from tests.ports import port

LABEL = "test-haproxy-ingress"


def test_the_api_answers_every_request_through_haproxy(settings: Settings) -> None:
    api_port = settings.api_port + 20  # and the four after it (metrics, dashboard, HAProxy's stats and metrics)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"METERRAY_BENCH_API_SIM_PORT": str(port("haproxy-bench-sim")), "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "meterray.app.cli", "bench", "api", "--ingress", "haproxy", "--meters", "5",
         "--rate", "10", "--seconds", "5", "--no-search", "--overload-rate", "0", "--label", LABEL,
         "--api-port", str(api_port)],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    run = json.loads((REPO_ROOT / "bench" / "results" / "api.json").read_text())["runs"][LABEL]
    assert run["ingress"] == "haproxy" and run["serve_env"]["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    for path in ("current", "list"):
        m = run["paths"][path]["meterray"]
        assert (m["sent"], m["ok"], m["errors"]) == (50, 50, 0), (path, m)
        assert m["status_counts"] == {"200": 50}, (path, m)
    # HAProxy's own files are the runtime's (by its API port), not a path shared by every runtime of the machine.
    assert run["serve_env"]["RAY_SERVE_HAPROXY_SOCKET_PATH"].endswith(f"/mr-haproxy-{api_port}/admin.sock")
