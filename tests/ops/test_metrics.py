"""Metrics: the Grafana dashboard (ops/grafana/meterray.json) queries only series a running pipeline
exports, by the labels those series carry, and covers every stage the runtime is watched by. The series
are read from the Prometheus endpoint of the test cluster's node (Ray's metrics agent), as Prometheus
scrapes it."""
from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import pytest

from meterray.settings import REPO_ROOT, Settings
from storage.kafka import topics
from tests.conftest import wait_for

DASHBOARD = REPO_ROOT / "ops" / "grafana" / "meterray.json"
SERIES = re.compile(r"\bray_meterray_[a-z0-9_]+")
BY = re.compile(r"\bby\s*\(([^)]*)\)")
# What the runtime is watched by (the list): each one a series the dashboard must query.
REQUIRED = {
    "ray_meterray_ingested_readings_total",  # ingest rate per protocol
    "ray_meterray_poll_latency_ms_bucket",  # poll latency
    "ray_meterray_consumer_lag_records",  # Kafka consumer lag per group and partition
    "ray_meterray_dead_letters_total",  # dead letters
    "ray_meterray_devices",  # device states
    "ray_meterray_sink_write_latency_ms_bucket",  # sink write latency
    "ray_meterray_actor_restarts_total",  # actor restarts
}
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>.*)\})?\s")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="')


def _expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p["targets"]]


def _scrape(port: int) -> dict[str, set[str]]:
    """Series name → the label names its samples carry, from one scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m["name"].startswith("ray_meterray_"):
            out.setdefault(m["name"], set()).update(LABEL.findall(m["labels"] or ""))
    return out


def _metrics_port() -> int:
    import ray

    (node,) = [n for n in ray.nodes() if n["Alive"]]
    return int(node["MetricsExportPort"])


def _provoke_dead_letter_and_restart(settings: Settings) -> None:
    """A record the codec refuses (a dead letter) and a writer the supervisor must replace (a restart):
    both counters appear only once they counted something. The writer resumes from its committed offsets."""
    import ray
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    p.produce(settings.topic(topics.READINGS_RAW), b"not json at all", b"metrics-poison", partition=0)
    assert p.flush(30) == 0
    ray.kill(ray.get_actor("pg-writer-0", namespace=settings.ray_namespace), no_restart=True)


def test_the_dashboard_queries_only_exported_series_by_their_labels(ops_runtime: dict[str, Any]) -> None:
    exprs = _expressions()
    queried = {name for e in exprs for name in SERIES.findall(e)}
    assert REQUIRED <= queried, REQUIRED - queried
    assert all(SERIES.search(e) for e in exprs), [e for e in exprs if not SERIES.search(e)]

    _provoke_dead_letter_and_restart(ops_runtime["settings"])
    port = _metrics_port()
    # Ray's agent exports every 10 s; the supervisor's gauges refresh every 10 s too.
    exported = wait_for(lambda: (lambda s: s if queried <= s.keys() else None)(_scrape(port)), 120,
                        "every series the dashboard queries on the node's Prometheus endpoint", every_s=2.0)
    assert isinstance(exported, dict)
    for expr in exprs:
        labels = {x.strip() for group in BY.findall(expr) for x in group.split(",")} - {"le", ""}
        carried = set().union(*(exported[name] for name in SERIES.findall(expr)))
        assert labels <= carried, (expr, labels - carried)


def test_lag_and_device_gauges_carry_the_runtimes_groups_partitions_and_states(ops_runtime: dict[str, Any]) -> None:
    settings: Settings = ops_runtime["settings"]
    port = _metrics_port()

    def lines() -> list[str] | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        found = [x for x in text.splitlines() if x.startswith(("ray_meterray_consumer_lag_records{",
                                                               "ray_meterray_devices{"))]
        mine = any(f'group="{settings.kafka_topic_prefix}' in x for x in found)
        return found if mine and _online(found, settings) == len(ops_runtime["manifest"]) else None
    found = wait_for(lines, 120, "the lag and device gauges", every_s=2.0)
    assert isinstance(found, list)
    lag = [x for x in found if x.startswith("ray_meterray_consumer_lag_records{")]
    # The session's runtime exports its own groups too: these are this pipeline's (its topic prefix).
    lag = [x for x in lag if f'group="{settings.kafka_topic_prefix}' in x]
    groups = {re.search(r'group="([^"]+)"', x)[1] for x in lag}  # type: ignore[index]
    assert groups == {settings.topic("meterray-device-processor"), settings.topic("meterray-pg-writer"),
                      settings.topic("meterray-notifier"), settings.topic("meterray-ch-writer")}
    partitions = {re.search(r'partition="([^"]+)"', x)[1] for x in lag}  # type: ignore[index]
    assert partitions == {str(p) for p in range(settings.kafka_partitions)}
    assert _online(found, settings) == len(ops_runtime["manifest"])  # every meter of this pipeline online


def _online(lines: list[str], settings: Settings) -> float | None:
    """This runtime's count of online devices (its Ray namespace), from the scraped lines."""
    mine = [x for x in lines if x.startswith("ray_meterray_devices{") and 'status="online"' in x
            and f'namespace="{settings.ray_namespace}"' in x]
    return float(mine[0].rsplit(" ", 1)[1]) if mine else None


@pytest.mark.parametrize("path", [DASHBOARD])
def test_the_dashboard_is_grafana_json_with_a_prometheus_datasource_variable(path: Any) -> None:
    doc = json.loads(path.read_text())
    assert doc["uid"] and doc["title"]
    (var,) = [v for v in doc["templating"]["list"] if v["type"] == "datasource"]
    assert var["query"] == "prometheus"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in doc["panels"]:
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"]
