"""Configuration changes while everything runs: the supervisor applies only the difference, and a bad
connection fails alone, with a reason, without restarting anything.

A second small simulator (2 ports × 2 meters) provides the meters that come and go; the session's
original meters must not notice: no missed or doubled poll slot, no restarted poll task, no moved
connection.
"""
from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import ray

from actors.supervisor import LISTEN_APPLICATION_NAME
from meterray.domain import DeviceSpec, ModbusConnection
from meterray.settings import Settings
from protocols.modbus.profiles import PROFILES
from storage.postgres import devices as device_repo
from tests.conftest import POLL_INTERVAL_S, wait_for
from tests.pipeline.helpers import all_devices, db, sql
from tests.ports import port

ENERGY = "1-0:1.8.0"
EXTRA_BASE_PORT = port("reconfigure-sim")  # control port one below
EXTRA_PREFIX = "extra-"
FIRST_REPORT_BOUND_S = 30.0  # registration → first reading in PostgreSQL, on this busy 2-core machine
SLOT_MS = int(POLL_INTERVAL_S * 1000)


@pytest.fixture(scope="module")
def extra_meters(runtime: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict]]:
    from meterray.app.demo import start_simulator

    manifest = tmp_path_factory.mktemp("extra-sim") / "manifest.json"
    proc = start_simulator(runtime["settings"], 4, 2, EXTRA_BASE_PORT, manifest)
    yield json.loads(Path(manifest).read_text())
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)



def _status(runtime: dict) -> dict:
    return ray.get(runtime["supervisor"].status.remote())


def _shards(status: dict) -> dict[str, dict]:
    return {n: c for n, c in status["children"].items() if c["role"] == "modbus-shard"}


def _placement(status: dict) -> dict[str, str]:
    return {cid: name for name, c in _shards(status).items() for cid in c["connection_ids"]}


def _latest(settings: Settings, device_ids: list[str]) -> dict[str, datetime]:
    rows = sql(settings.pg_dsn, "SELECT device_id, max(ts) AS ts FROM monitoring.readings"
                                " WHERE device_id = ANY($1::text[]) AND quantity = $2 GROUP BY device_id",
               device_ids, ENERGY)
    return {r["device_id"]: r["ts"] for r in rows}


def _all_have_readings_after(settings: Settings, device_ids: list[str], t: datetime) -> bool:
    latest = _latest(settings, device_ids)
    return all(i in latest and latest[i] >= t for i in device_ids)


def _stamps(settings: Settings, device_id: str, since: datetime, until: datetime) -> list[int]:
    rows = sql(settings.pg_dsn, "SELECT (extract(epoch FROM ts) * 1000)::bigint AS ms FROM monitoring.readings"
                                " WHERE device_id = $1 AND quantity = $2 AND ts >= $3 AND ts < $4 ORDER BY ts",
               device_id, ENERGY, since, until)
    return [r["ms"] for r in rows]


def test_add_change_remove_touch_only_those_connections(runtime: dict, extra_meters: list[dict]) -> None:
    from meterray.app.demo import manifest_connections

    settings = runtime["settings"]
    originals = [m["device_id"] for m in runtime["manifest"]]
    start = datetime.now(timezone.utc)
    wait_for(lambda: _all_have_readings_after(settings, originals, start), 60, "every original meter to report")
    before = _status(runtime)
    t0 = datetime.now(timezone.utc)

    extra = manifest_connections(extra_meters, POLL_INTERVAL_S, 0.5, prefix=EXTRA_PREFIX)
    assert len(extra) == 2
    extra_ids = [d.device_id for c in extra for d in c.devices]
    try:
        # 1. add two connections (four meters)
        registered = time.monotonic()
        db(settings, device_repo.save_modbus_connections, extra)
        wait_for(lambda: _all_have_readings_after(settings, extra_ids, t0), FIRST_REPORT_BOUND_S,
                 "the new meters' first readings in PostgreSQL")
        first_report_s = time.monotonic() - registered
        print(f"\nnew meters: registration → first reading in PostgreSQL in {first_report_s:.1f} s")
        extra_shards = {_placement(_status(runtime))[c.connection_id] for c in extra}

        # 2. change one (its timeout) 3. remove the other
        changed = replace(extra[0], timeout_s=0.4)
        db(settings, device_repo.save_modbus_connections, [changed])
        wait_for(lambda: _status(runtime)["last_change"].get("changed") == [changed.connection_id], 20,
                 "the supervisor to apply the changed connection")
        db(settings, device_repo.delete_connections, [extra[1].connection_id])
        wait_for(lambda: _status(runtime)["last_change"].get("removed") == [extra[1].connection_id], 20,
                 "the supervisor to apply the removed connection")
        removed_at = datetime.now(timezone.utc)

        # A few more slots for everyone, then the window [t0, t1) is complete in PostgreSQL
        # (a device's readings arrive in slot order: one Kafka partition per device).
        t1 = removed_at + timedelta(seconds=3)
        wait_for(lambda: _all_have_readings_after(settings, originals + [d.device_id for d in changed.devices],
                                                  t1 + timedelta(seconds=1)), 30, "readings after the changes")
        after = _status(runtime)
    finally:
        db(settings, device_repo.delete_connections, [c.connection_id for c in extra])

    # Nothing restarted, nothing of the originals moved.
    assert {n: c["restarts"] for n, c in _shards(after).items() if n in _shards(before)} == \
        {n: c["restarts"] for n, c in _shards(before).items()}
    assert {cid: s for cid, s in _placement(after).items() if not cid.startswith(EXTRA_PREFIX)} == _placement(before)
    # Poll tasks started/stopped: exactly the two added + the changed one's restart + the removed one,
    # and only on the shards that hold the extra connections; every other shard was not touched.
    delta = {n: (c["started"] - _shards(before).get(n, {"started": 0})["started"],
                 c["stopped"] - _shards(before).get(n, {"stopped": 0})["stopped"]) for n, c in _shards(after).items()}
    assert sum(d[0] for d in delta.values()) == 3 and sum(d[1] for d in delta.values()) == 2, delta
    assert {n for n, d in delta.items() if d != (0, 0)} <= extra_shards, (delta, extra_shards)

    # Every original meter: every slot of [t0, t1) exactly once, across all three changes.
    for device_id in originals:
        stamps = _stamps(settings, device_id, t0, t1)
        assert stamps, device_id
        assert stamps[0] - t0.timestamp() * 1000 < SLOT_MS and t1.timestamp() * 1000 - stamps[-1] <= SLOT_MS, \
            (device_id, stamps[0], stamps[-1])
        steps = {b - a for a, b in zip(stamps, stamps[1:], strict=False)}
        assert steps == {SLOT_MS}, f"{device_id}: missed or doubled slots across the reconfiguration: {steps}"
    # The removed connection's meters stopped; the changed one's go on.
    gone = [d.device_id for d in extra[1].devices]
    assert all(ts < removed_at + timedelta(seconds=2) for ts in _latest(settings, gone).values())
    assert _all_have_readings_after(settings, [d.device_id for d in changed.devices], t1)


def test_bad_connections_fail_alone_with_a_reason(runtime: dict, extra_meters: list[dict]) -> None:
    settings, api = runtime["settings"], runtime["api"]
    originals = [m["device_id"] for m in runtime["manifest"]]
    wait_for(lambda: _all_have_readings_after(settings, originals, datetime.now(timezone.utc) - timedelta(seconds=3)),
             60, "every original meter to report")
    before = _status(runtime)
    port = extra_meters[0]["port"]
    good = next(m for m in extra_meters if m["port"] == port and m["unit_id"] == 1)
    try:
        # A profile an older version of the code knew, and a device stored with it; then the code
        # "forgets" it (what `meterray migrate` does when a profile leaves PROFILES).
        sql(settings.pg_dsn, "INSERT INTO devices.profiles (name) VALUES ('retired-meter')")
        sql(settings.pg_dsn, "INSERT INTO devices.connections (id, protocol, host, port, poll_interval_s, timeout_s)"
                             " VALUES ('bad-mix', 'modbus_tcp', '127.0.0.1', $1, 1, 0.5)", port)
        sql(settings.pg_dsn, "INSERT INTO devices.devices (id, name, protocol, profile, connection_id, unit_id) VALUES"
                             " ('bad-mix-good', 'g', 'modbus_tcp', $1, 'bad-mix', 1),"
                             " ('bad-mix-gone', 'x', 'modbus_tcp', 'retired-meter', 'bad-mix', 2)", good["profile"])
        sql(settings.pg_dsn, "UPDATE devices.profiles SET available = false WHERE name = 'retired-meter'")
        # A host name that does not resolve (RFC 2606 reserves .invalid): valid configuration, so stored.
        db(settings, device_repo.save_modbus_connections,
            [ModbusConnection("bad-dns", "no-such-meter.invalid", 502, 1.0, 0.5,
                              (DeviceSpec("bad-dns-1", "sdm630", 1),))])

        def reasons() -> dict | None:
            d = {x["id"]: x for x in all_devices(api)}
            ok = (d["bad-mix-gone"]["last_failure_kind"] == "configuration" and d["bad-mix-gone"]["status"] == "offline"
                  and d["bad-dns-1"]["last_failure_kind"] == "host_unresolved" and d["bad-dns-1"]["status"] == "offline"
                  and d["bad-mix-good"]["status"] == "online")
            return d if ok else None

        devices = wait_for(reasons, 60, "the bad devices to go offline with their reason, the good one online")
        assert "unknown profile 'retired-meter'" in devices["bad-mix-gone"]["last_failure"]
        assert f"known profiles: {', '.join(sorted(PROFILES))}" in devices["bad-mix-gone"]["last_failure"]
        assert "'no-such-meter.invalid' does not resolve" in devices["bad-dns-1"]["last_failure"]
        # Every other meter goes on, and no shard restarted (no crash, no restart loop).
        since = datetime.now(timezone.utc)
        wait_for(lambda: _all_have_readings_after(settings, originals + ["bad-mix-good"], since + timedelta(seconds=2)),
                 30, "every other meter to keep reporting")
        after = _status(runtime)
        assert {n: c["restarts"] for n, c in _shards(after).items() if n in _shards(before)} == \
            {n: c["restarts"] for n, c in _shards(before).items()}
        for shard in ray.get(runtime["supervisor"].handles.remote("modbus-shard")):
            ray.get(shard.ping.remote())  # raises if any poll task died
    finally:
        db(settings, device_repo.delete_connections, ["bad-mix", "bad-dns"])
        sql(settings.pg_dsn, "DELETE FROM devices.profiles WHERE name = 'retired-meter'")


def test_a_lost_listening_connection_is_reopened_and_changes_still_apply(runtime: dict,
                                                                         extra_meters: list[dict]) -> None:
    from meterray.app.demo import manifest_connections

    settings = runtime["settings"]
    # Cut the supervisor's LISTEN session, as a PostgreSQL restart or a network drop would.
    listening = ("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                 f" AND application_name = '{LISTEN_APPLICATION_NAME}'")
    old = {r["pid"] for r in sql(settings.pg_dsn, listening)}
    assert len(old) == 1, "the supervisor listens on one session of its own"
    sql(settings.pg_dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY($1::int[])",
        list(old))
    wait_for(lambda: {r["pid"] for r in sql(settings.pg_dsn, listening)} - old, 20, "the supervisor to listen again")
    extra = manifest_connections(extra_meters, POLL_INTERVAL_S, 0.5, prefix="relisten-")[:1]
    try:
        registered = time.monotonic()
        db(settings, device_repo.save_modbus_connections, extra)
        # Well inside the reconcile timer (30 s): the NOTIFY reached the new session.
        wait_for(lambda: _status(runtime)["last_change"].get("added") == [extra[0].connection_id], 10,
                 "the supervisor to apply a change signalled after the reconnect")
        print(f"\nchange applied {time.monotonic() - registered:.1f} s after it was stored (after a reconnect)")
    finally:
        db(settings, device_repo.delete_connections, [c.connection_id for c in extra])
