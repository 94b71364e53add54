"""The runtime view's shaping (serve_apps.monitoring.runtime.shape): rates from two samples, none across a
restart, actors in pipeline order, lag by role."""
from __future__ import annotations

from typing import Any

from meterray.app.status import render
from serve_apps.monitoring.runtime import ConsumerGroup, Sample, shape
from storage.kafka.lag import GroupLag

GROUPS = (ConsumerGroup("device-processor", "g-dp", "readings.raw"), ConsumerGroup("pg-writer", "g-pw", "readings"))


def _status(polls: int, messages: int, shard_restarts: int = 0) -> dict[str, Any]:
    shard = {"pid": 7, "polls_ok": polls, "polls_failed": 0, "readings": polls * 30, "dead_letters": 0}
    stage = {"pid": 8, "messages": messages, "batches": 3, "dead_letters": 1}
    return {"pid": 1, "uptime_s": 10.0, "reconciles": 2, "last_change": {}, "children": {
        "pg-writer-0": {"role": "pg-writer", "connections": 0, "restarts": 0, "connection_ids": [],
                        "started": 0, "stopped": 0, "last_ping": stage},
        "modbus-shard-10": {"role": "modbus-shard", "connections": 1, "restarts": shard_restarts,
                            "connection_ids": ["c3"], "started": 1, "stopped": 0, "last_ping": shard},
        "modbus-shard-9": {"role": "modbus-shard", "connections": 2, "restarts": 0, "connection_ids": ["c1", "c2"],
                           "started": 2, "stopped": 0, "last_ping": shard},
    }}


def _sample(at: float, polls: int, messages: int, shard_restarts: int = 0) -> Sample:
    lag = (GroupLag("g-dp", "readings.raw", 5, 4), GroupLag("g-pw", "readings", None, 0, "broker down"))
    return Sample(at, _status(polls, messages, shard_restarts), lag, {"online": 3, "offline": 1})


def test_rates_are_the_counters_growth_per_second_and_none_across_a_restart() -> None:
    view = shape(_sample(102.0, polls=40, messages=90, shard_restarts=1), _sample(100.0, polls=20, messages=50), GROUPS)
    assert view.window_s == 2.0
    by_name = {a.name: a for a in view.actors}
    assert by_name["modbus-shard-9"].rates_per_s == {"polls_ok": 10.0, "polls_failed": 0.0, "readings": 300.0,
                                                     "dead_letters": 0.0}
    assert by_name["modbus-shard-10"].rates_per_s is None  # replaced between the samples: counters restarted
    assert by_name["pg-writer-0"].rates_per_s == {"messages": 20.0, "dead_letters": 0.0}
    assert view.totals_per_s["modbus-shard.polls_ok"] == 10.0


def test_actors_come_in_pipeline_order_and_lag_names_its_stage() -> None:
    view = shape(_sample(1.0, 1, 1), None, GROUPS)
    assert [a.name for a in view.actors] == ["modbus-shard-9", "modbus-shard-10", "pg-writer-0"]
    assert view.window_s is None and all(a.rates_per_s is None for a in view.actors)
    assert [(g.role, g.lag, g.error) for g in view.lag] == [("device-processor", 5, None),
                                                           ("pg-writer", None, "broker down")]


def test_the_screen_shows_each_shard_its_assignment_and_the_device_counts() -> None:
    text = render(shape(_sample(102.0, 40, 90), _sample(100.0, 20, 50), GROUPS))
    assert "modbus-shard-9: 2 connections (tasks started 2, stopped 0): c1, c2" in text
    row = next(line for line in text.splitlines() if line.startswith("modbus-shard-9 "))
    assert row.split()[1:5] == ["7", "0", "2", "10.0"]  # pid, restarts, connections, polls/s
    assert "DEVICES  offline 1  online 3" in text and "total 4" in text
    assert "? broker down" in text
