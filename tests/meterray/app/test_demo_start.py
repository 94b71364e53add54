"""`meterray demo` as a user starts it (its own process, database, topics, Ray and ClickHouse): what it prints
at start, and that the forecast it trained on its backfilled history is served."""
from __future__ import annotations

import asyncio
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from confluent_kafka.admin import AdminClient

from meterray.settings import Settings
from tests.conftest import RUN_ID
from tests.pipeline.helpers import http, sql
from tests.ports import port

METERS = 5
START_TIMEOUT_S = 600  # Ray, Serve, the simulator, the history through the pipeline and training, on 2 busy cores


@pytest.fixture(scope="module")
def demo_run(settings: Settings) -> Iterator[tuple[str, Settings]]:
    """The demo until it says "Press Ctrl-C", then stopped as Ctrl-C stops it; yields (its output, its settings)."""
    from storage.postgres.databases import drop_database, recreate_database

    base = Settings.from_env()
    db = f"{urlsplit(base.pg_dsn).path.lstrip('/') or 'meterray'}_demo_{RUN_ID}"
    var = Path(tempfile.mkdtemp(prefix=f"meterray-demo-{RUN_ID}-"))
    api_port = settings.api_port + 7  # beside the run's API, in this checkout's ports
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"METERRAY_PG_DSN": asyncio.run(recreate_database(base.pg_dsn, db)),
            "METERRAY_KAFKA_TOPIC_PREFIX": f"demo-{RUN_ID}.", "METERRAY_RAY_NAMESPACE": f"meterray-demo-{RUN_ID}",
            "METERRAY_API_PORT": str(api_port), "METERRAY_DASHBOARD_PORT": str(api_port + 1000),
            "METERRAY_METRICS_PORT": str(port("demo-metrics")), "METERRAY_VAR_DIR": str(var),
            "METERRAY_CLICKHOUSE_URL": f"chdb://{var / 'clickhouse'}", "PYTHONUNBUFFERED": "1"}
    demo_settings = base.model_copy(update={"pg_dsn": env["METERRAY_PG_DSN"], "api_port": api_port,
                                            "kafka_topic_prefix": env["METERRAY_KAFKA_TOPIC_PREFIX"]})
    proc = subprocess.Popen([sys.executable, "-m", "meterray.app.cli", "demo", "--meters", str(METERS),
                             "--history-days", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    assert proc.stdout is not None
    out: list[str] = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while not any("Press Ctrl-C to stop." in line for line in out):
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is not None:
                    out.append(proc.stdout.read().decode(errors="replace"))
                pytest.fail(f"the demo did not finish starting (exit {proc.poll()}):\n" + "".join(out)[-6000:])
            if sel.select(timeout=1.0):
                out.append(proc.stdout.readline().decode(errors="replace"))
        yield "".join(out), demo_settings
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the demo stops its runtime, Ray and simulators itself
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        admin = AdminClient({"bootstrap.servers": base.kafka_bootstrap})
        mine = [t for t in admin.list_topics(timeout=30).topics if t.startswith(env["METERRAY_KAFKA_TOPIC_PREFIX"])]
        for future in admin.delete_topics(mine, operation_timeout=30).values() if mine else ():
            future.result(timeout=60)
        asyncio.run(drop_database(base.pg_dsn, db))
        shutil.rmtree(var, ignore_errors=True)


def _token(api: str, email: str, password: str) -> str:
    body = urllib.parse.urlencode({"username": email, "password": password}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{api}/api/v1/auth/token", data=body), timeout=30) as resp:
        token: str = json.loads(resp.read())["access_token"]
    return token


def test_the_demo_prints_where_the_cabinet_is_how_to_log_in_and_how_to_publish(demo_run: tuple[str, Settings]) -> None:
    out, s = demo_run
    api = f"http://127.0.0.1:{s.api_port}"
    assert f"web cabinet:    {api}/ " in out
    assert f"OpenAPI docs:   {api}/docs" in out
    assert "log in as demo@meterray.local / meterray-demo" in out  # the settings' defaults
    assert re.search(r"mosquitto_pub -h \S+ -p 1883 -q 1 -t meterray/v1/my-meter-1/readings -m '\{", out)
    # The history, through the pipeline, before the URLs: a day of every quantity of each meter.
    assert re.search(rf"history: 1 days × {METERS} meters … [\d,]+ readings \([\d,]+ values\) written in", out), out
    assert out.index("written in") < out.index("web cabinet:")
    assert re.search(rf"forecast: model v1 \(\w+\) over {METERS} meters", out), out


def test_the_demo_cabinet_has_history_and_a_forecast_from_its_first_minute(demo_run: tuple[str, Settings]) -> None:
    out, s = demo_run
    api = f"http://127.0.0.1:{s.api_port}"
    headers = {"Authorization": f"Bearer {_token(api, s.demo_admin_email, s.demo_password.get_secret_value())}"}
    org = sql(s.pg_dsn, "SELECT id FROM auth.organisations WHERE inn = $1", s.demo_organisation_inn)[0]["id"]
    # The organisation's consumption of yesterday, from the ClickHouse copy: every meter has a whole day.
    status, body = http("GET", f"{api}/api/v1/organisations/{org}/aggregates?interval=1d", headers=headers)
    assert status == 200, body
    days = [i for i in body["intervals"] if i["energy"] is not None]
    assert len(days) >= 2 and max(i["devices"] for i in days) == METERS, body
    # The forecast band: today's and tomorrow's half-hours from the model trained at start.
    status, body = http("GET", f"{api}/api/v1/organisations/{org}/forecast?horizon=48", headers=headers)
    assert status == 200, body
    points = body["points"]
    assert len(points) == 48 and all(p["energy"] is not None and p["lower"] <= p["energy"] <= p["upper"]
                                     for p in points), body
