"""Outages lose nothing, checked slot by slot on each connection's poll grid.

PostgreSQL and Kafka are stopped and started with meterray's own `meterray services down|up <name>`,
so these tests need services that this checkout started (`meterray services up`, ports from
METERRAY_PG_PORT / METERRAY_KAFKA_PORT matching METERRAY_PG_DSN / METERRAY_KAFKA_BOOTSTRAP); they
refuse to run against a server they cannot stop. A shard is killed with SIGKILL.

Every check is the same: for every simulated meter and every quantity of its profile, each poll slot
(phase + k·interval, phase = crc32(connection id) % interval, see actors/modbus_shard.py) in the
window is in monitoring.readings exactly once, and no reading lies off the grid. The only slots
excused are polls the meter itself failed (a PollFailure record for that slot in readings.raw) and,
for the killed shard only, the measured outage of that shard. Figures are printed (`pytest -s`).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

import pytest
import ray

from meterray.app.demo import SIM_PREFIX
from meterray.domain import PollFailure, ReadingBatch
from meterray.settings import REPO_ROOT, Settings
from protocols.modbus.profiles import PROFILES
from storage.kafka import codec, topics
from tests.conftest import POLL_INTERVAL_S, wait_for
from tests.pipeline.helpers import http, platform_admin, read_topic, sql

INTERVAL_MS = int(POLL_INTERVAL_S * 1000)
LAG_MS = 3000  # a poll's way from the meter to PostgreSQL when nothing is down, with room for a slow machine


# ---------------------------------------------------------------- the slot grid


@dataclass(frozen=True)
class Meter:
    device_id: str
    connection_id: str
    quantities: tuple[str, ...]

    @property
    def phase_ms(self) -> int:
        return zlib.crc32(self.connection_id.encode()) % INTERVAL_MS

    def slots(self, start_ms: int, end_ms: int) -> range:
        """The poll slots of this meter's connection in [start_ms, end_ms)."""
        first = self.phase_ms + -(-(start_ms - self.phase_ms) // INTERVAL_MS) * INTERVAL_MS
        return range(first, end_ms, INTERVAL_MS)


def _meters(manifest: list[dict]) -> list[Meter]:
    return [Meter(m["device_id"], f"{SIM_PREFIX}{m['host']}:{m['port']}",
                  tuple(f.quantity for f in PROFILES[m["profile"]].fields)) for m in manifest]


@dataclass
class GridCheck:
    expected: int  # (meter, quantity, slot) triples in the window
    missing: dict[tuple[str, str], list[int]]  # not in PostgreSQL, nor excused
    off_grid: dict[tuple[str, str], list[int]]  # in PostgreSQL at a time that is no slot
    failed_polls: dict[str, list[int]]  # slots the meter itself failed (excused, reported)
    excused: int  # triples inside an excused window (the killed shard's outage)


def _stored(dsn: str, start_ms: int, end_ms: int) -> dict[tuple[str, str], list[int]]:
    rows = sql(dsn, "SELECT device_id, quantity, (extract(epoch FROM ts) * 1000)::bigint AS ms"
                    " FROM monitoring.readings WHERE ts >= $1 AND ts < $2", _dt(start_ms), _dt(end_ms))
    out: dict[tuple[str, str], list[int]] = defaultdict(list)
    for r in rows:
        out[(r["device_id"], r["quantity"])].append(r["ms"])
    return out


def _raw_items(settings: Settings) -> Iterator[ReadingBatch | PollFailure]:
    """Every record of readings.raw that decodes (other tests write crafted poison there)."""
    for _, value in read_topic(settings.kafka_bootstrap, settings.topic(topics.READINGS_RAW), timeout_s=30):
        try:
            yield codec.decode(value)
        except codec.CodecError:
            continue


def _failed_polls(settings: Settings, start_ms: int, end_ms: int) -> dict[str, set[int]]:
    """Slots a meter answered with a failure (timeout, exception, bad answer), from readings.raw."""
    out: dict[str, set[int]] = defaultdict(set)
    for item in _raw_items(settings):
        if isinstance(item, PollFailure) and start_ms <= item.ts_ms < end_ms:
            out[item.device_id].add(item.ts_ms)
    return out


def _check_grid(settings: Settings, meters: list[Meter], start_ms: int, end_ms: int,
                excuse: dict[str, range] | None = None) -> GridCheck:
    stored = _stored(settings.pg_dsn, start_ms, end_ms)
    missing: dict[tuple[str, str], list[int]] = {}
    off_grid: dict[tuple[str, str], list[int]] = {}
    expected = excused = 0
    for m in meters:
        grid = m.slots(start_ms, end_ms)
        allowed = (excuse or {}).get(m.device_id, range(0))
        for q in m.quantities:
            have = stored.get((m.device_id, q), [])
            assert len(have) == len(set(have))  # the primary key; a slot twice would be a schema bug
            expected += len(grid)
            gaps = [s for s in grid if s not in set(have)]
            excused += sum(1 for s in gaps if s in allowed)
            gaps = [s for s in gaps if s not in allowed]
            if gaps:
                missing[(m.device_id, q)] = gaps
            stray = sorted(set(have) - set(grid))
            if stray:
                off_grid[(m.device_id, q)] = stray
    failed: dict[str, list[int]] = {}
    if missing:  # a slot the meter failed has no reading by right: find those and excuse them
        polls = _failed_polls(settings, start_ms, end_ms)
        for key in list(missing):
            failed_here = polls.get(key[0], set())
            rest = [s for s in missing[key] if s not in failed_here]
            if len(rest) < len(missing[key]):
                failed[key[0]] = sorted(failed_here)
            if rest:
                missing[key] = rest
            else:
                del missing[key]
    return GridCheck(expected, missing, off_grid, failed, excused)


def _assert_complete(check: GridCheck, what: str) -> None:
    print(f"{what}: {check.expected} (meter, quantity, slot) expected; failed polls excused: "
          f"{sum(len(v) for v in check.failed_polls.values())} {dict(check.failed_polls) or ''}; "
          f"outage slots excused: {check.excused}")
    assert not check.off_grid, f"{what}: readings off the slot grid {_head(check.off_grid)}"
    assert not check.missing, (f"{what}: {sum(len(v) for v in check.missing.values())} slots missing in "
                               f"{len(check.missing)} series, e.g. {_head(check.missing)}")


def _head(d: dict[tuple[str, str], list[int]]) -> dict[tuple[str, str], list[str]]:
    return {k: [_iso(s) for s in v[:5]] for k, v in list(d.items())[:4]}


# ---------------------------------------------------------------- waiting for the pipeline


def _now_ms() -> int:
    return int(time.time() * 1000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _iso(ms: int) -> str:
    return _dt(ms).strftime("%H:%M:%S.%f")[:-3]


def _stored_up_to(settings: Settings, meters: list[Meter], until_ms: int) -> bool:
    """True once every meter has every quantity stored at or after `until_ms`."""
    rows = sql(settings.pg_dsn, "SELECT device_id, quantity FROM monitoring.readings WHERE ts >= $1"
                                " GROUP BY device_id, quantity", _dt(until_ms))
    have = {(r["device_id"], r["quantity"]) for r in rows}
    return all((m.device_id, q) in have for m in meters for q in m.quantities)


def _wait_stored(settings: Settings, meters: list[Meter], until_ms: int, timeout_s: float, what: str) -> float:
    """Wait until every series reaches `until_ms`; returns how long that took."""
    t0 = time.monotonic()
    wait_for(lambda: _stored_up_to(settings, meters, until_ms), timeout_s, what, every_s=1.0)
    return time.monotonic() - t0


def _shard_pings(runtime: dict) -> list[dict]:
    children = ray.get(runtime["supervisor"].status.remote())["children"]
    return [c["last_ping"] for c in children.values() if c["role"] == "modbus-shard" and c["last_ping"]]


_STAGE_FIELDS = ("pid", "batches", "messages", "sink_failures", "last_error", "paused", "outage_s", "rebalances",
                 "consumer_reopened")


def _stage_pings(runtime: dict) -> dict[str, dict]:
    children = ray.get(runtime["supervisor"].status.remote())["children"]
    return {name: {k: v for k, v in c["last_ping"].items() if k in _STAGE_FIELDS}
            for name, c in children.items() if c["role"] != "modbus-shard"}


def _restarts(runtime: dict) -> dict[str, int]:
    children = ray.get(runtime["supervisor"].status.remote())["children"]
    return {name: c["restarts"] for name, c in children.items()}


def _restarted_since(runtime: dict, before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in _restarts(runtime).items() if v != before.get(k, 0)}


# ---------------------------------------------------------------- stopping services the project's own way


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _endpoint(settings: Settings, name: str) -> tuple[str, int]:
    if name == "postgres":
        url = urlsplit(settings.pg_dsn)
        return url.hostname or "127.0.0.1", url.port or 5432
    host, _, port = settings.kafka_bootstrap.split(",")[0].rpartition(":")
    return host, int(port)


def _services(settings: Settings, action: str, name: str) -> tuple[float, int]:
    """`meterray services <action> <name>` in a subprocess; returns the seconds it took and the
    wall-clock ms at which the port stopped (down) or started (up) answering."""
    env_var, default = {"postgres": ("METERRAY_PG_PORT", 5432), "kafka": ("METERRAY_KAFKA_PORT", 9092)}[name]
    host, port = _endpoint(settings, name)
    if int(os.environ.get(env_var, default)) != port:
        pytest.fail(f"meterray connects to {name} on port {port} but `meterray services` would manage port "
                    f"{os.environ.get(env_var, default)}: set {env_var}={port}")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "meterray.app.cli", "services", action, name], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    changed_ms = None
    while proc.poll() is None and time.monotonic() - t0 < 240:
        if changed_ms is None and _port_open(host, port) == (action == "up"):
            changed_ms = _now_ms()
        time.sleep(0.2)
    output = proc.communicate(timeout=10)[0]
    took = time.monotonic() - t0
    assert proc.returncode == 0, f"services {action} {name} failed: {output}"
    if action == "down" and _port_open(host, port):
        pytest.fail(f"{name} on {host}:{port} still answers after `meterray services down {name}`: it was not "
                    f"started by this checkout's `meterray services up`, so this test cannot stop it")
    return took, changed_ms or _now_ms()


@pytest.fixture
def stoppable(runtime: dict) -> Iterator[list[str]]:
    """Services a test stops; whatever happens, they are started again afterwards."""
    stopped: list[str] = []
    yield stopped
    for name in stopped:
        _services(runtime["settings"], "up", name)


def _outage(runtime: dict, stoppable: list[str], name: str, seconds: float,
            at_end: Callable[[], object] = lambda: None) -> tuple[int, int]:
    """Stop `name`, keep it down for `seconds`, call `at_end` while it is still down, start it again;
    returns (down, up) wall-clock ms."""
    settings = runtime["settings"]
    stoppable.append(name)
    t_stop, closed_ms = _services(settings, "down", name)
    time.sleep(seconds)  # the outage itself, not a wait for a condition
    at_end()
    t_start, open_ms = _services(settings, "up", name)
    stoppable.remove(name)
    print(f"{name}: port closed {_iso(closed_ms)} → open again {_iso(open_ms)} ({(open_ms - closed_ms) / 1000:.1f}s "
          f"unreachable; `services down` took {t_stop:.1f}s, `services up` {t_start:.1f}s, ready at {_iso(_now_ms())})")
    return closed_ms, open_ms


def _streaming(runtime: dict) -> tuple[list[Meter], int]:
    """Wait until every meter streams, then a few slots more; returns the meters and the window start."""
    settings, meters = runtime["settings"], _meters(runtime["manifest"])
    _wait_stored(settings, meters, _now_ms() - LAG_MS, 90, "every meter to stream into PostgreSQL")
    start_ms = _now_ms()
    _wait_stored(settings, meters, start_ms + 4 * INTERVAL_MS, 30, "four slots before the outage")
    return meters, start_ms


# ---------------------------------------------------------------- the tests


def test_killed_shard_misses_a_bounded_run_of_slots_and_nothing_after(runtime: dict) -> None:
    settings, supervisor = runtime["settings"], runtime["supervisor"]
    meters, start_ms = _streaming(runtime)
    shards = ray.get(supervisor.handles.remote("modbus-shard"))
    assert len(shards) >= 2, "the test set-up spreads connections over several shards"
    victim = ray.get(shards[0].ping.remote())
    victim_conns = set(victim["connections"])
    victims = {m.device_id for m in meters if m.connection_id in victim_conns}
    assert victims and len(victims) < len(meters)

    kill_ms = _now_ms()
    os.kill(victim["pid"], signal.SIGKILL)

    def restarted() -> dict | None:
        for child in ray.get(supervisor.status.remote())["children"].values():
            ping = child["last_ping"]
            if child["role"] == "modbus-shard" and set(ping.get("connections", [])) == victim_conns:
                if child["restarts"] >= 1 and ping.get("pid") not in (None, victim["pid"]):
                    return child
        return None

    child = wait_for(restarted, 60, "the supervisor to replace the killed shard")
    assert child["restarts"] == 1
    back_ms = _now_ms()
    end_ms = back_ms + 8 * INTERVAL_MS
    _wait_stored(settings, meters, end_ms, 90, "every meter's slots up to 8 s after the replacement")

    # The killed shard's meters may miss one run of consecutive slots around the kill; measure it.
    stored = _stored(settings.pg_dsn, start_ms, end_ms)
    runs: dict[str, range] = {}
    for m in meters:
        if m.device_id not in victims:
            continue
        gaps = sorted({s for q in m.quantities for s in m.slots(start_ms, end_ms)
                       if s not in set(stored.get((m.device_id, q), []))})
        if gaps:
            runs[m.device_id] = range(gaps[0], gaps[-1] + 1, INTERVAL_MS)
    longest = max((len(r) for r in runs.values()), default=0)
    print(f"shard kill: killed at {_iso(kill_ms)}, replacement answering {(back_ms - kill_ms) / 1000:.1f}s later; "
          f"slots missed per meter of the killed shard: "
          f"{ {d: (len(r), _iso(r[0]), _iso(r[-1])) for d, r in runs.items()} }; "
          f"longest outage {longest} slots = {longest * INTERVAL_MS / 1000:.0f}s")
    for device_id, run in runs.items():
        # The run lies around the kill: from polls not yet delivered at the kill to the replacement's first poll.
        assert run.start >= kill_ms - LAG_MS - INTERVAL_MS, (device_id, _iso(run.start), _iso(kill_ms))
        assert run.stop <= back_ms + 2 * INTERVAL_MS, (device_id, _iso(run.stop), _iso(back_ms))
        assert len(run) <= 30, f"{device_id} missed {len(run)} slots: more than 30 s for a shard restart"
    # Everything else, of every meter of every shard, is there: outside its run, a victim misses nothing.
    check = _check_grid(settings, meters, start_ms, end_ms, excuse=runs)
    _assert_complete(check, "shard kill")
    assert check.excused == sum(len(r) * len(next(m for m in meters if m.device_id == d).quantities)
                                for d, r in runs.items()), "a run's slots are missing in every quantity"


def test_postgres_stopped_for_60s_loses_no_slot(runtime: dict, stoppable: list[str]) -> None:
    settings, api = runtime["settings"], runtime["api"]
    meters, start_ms = _streaming(runtime)
    restarts_before = _restarts(runtime)

    down_ms, up_ms = _outage(runtime, stoppable, "postgres", 60)

    end_ms = _now_ms() + 5 * INTERVAL_MS  # five slots after recovery
    caught_up = _wait_stored(settings, meters, end_ms, 180, "every meter's slots up to 5 s after recovery")
    print(f"postgres: every series stored up to {_iso(end_ms)} {caught_up:.1f}s later "
          f"({(_now_ms() - up_ms) / 1000:.1f}s after the server was back)")
    check = _check_grid(settings, meters, start_ms, end_ms)
    print(f"postgres: window {_iso(start_ms)}..{_iso(end_ms)}, {(down_ms - start_ms) / 1000:.0f}s before, "
          f"{(up_ms - down_ms) / 1000:.0f}s down, {(end_ms - up_ms) / 1000:.0f}s after")
    _assert_complete(check, "postgres outage")

    # The API replica's pool gets over the outage too.
    t0 = time.monotonic()
    status = wait_for(lambda: http("GET", f"{api}/api/v1/devices", headers=platform_admin())[0] == 200 or None, 60,
                      "the monitoring API to answer again")
    print(f"postgres: API answered {time.monotonic() - t0:.1f}s after the check")
    assert status
    body = http("GET", f"{api}/api/v1/devices/{meters[0].device_id}/readings?quantity={meters[0].quantities[0]}"
                       f"&from={_dt(down_ms).isoformat()}&to={_dt(up_ms).isoformat()}&limit=1000".replace("+", "%2B"),
                headers=platform_admin())
    assert body[0] == 200, body
    assert len(body[1]["readings"]) >= (up_ms - down_ms) // INTERVAL_MS - 1  # the outage's slots, via the API
    print(f"postgres: children restarted during the outage: {_restarted_since(runtime, restarts_before)}")


@pytest.fixture(scope="module")
def kafka_outage(runtime: dict) -> Iterator[dict]:
    """Kafka stopped for 30 s while every meter streams; yields once every shard's outbox is empty."""
    settings = runtime["settings"]
    meters, start_ms = _streaming(runtime)
    restarts_before = _restarts(runtime)
    before = {p["name"]: p for p in _shard_pings(runtime)}
    during: dict[str, dict] = {}
    stopped: list[str] = []
    try:
        down_ms, up_ms = _outage(runtime, stopped, "kafka", 30,
                                 at_end=lambda: during.update({p["name"]: p for p in _shard_pings(runtime)}))
    finally:
        for name in stopped:
            _services(settings, "up", name)

    def drained() -> dict | None:
        pings = {p["name"]: p for p in _shard_pings(runtime)}
        done = pings.keys() == before.keys() and all(p["buffered_records"] == 0 for p in pings.values())
        return pings if done else None

    t0 = time.monotonic()
    after = wait_for(drained, 120, "every shard's outbox to empty into Kafka")
    print(f"kafka: outboxes empty {time.monotonic() - t0:.1f}s after `services up` returned")
    yield {"meters": meters, "start_ms": start_ms, "down_ms": down_ms, "up_ms": up_ms, "before": before,
           "during": during, "after": after, "restarts_before": restarts_before}


def test_kafka_stopped_for_30s_shards_keep_polling_and_hold_every_slot(runtime: dict, kafka_outage: dict) -> None:
    settings, meters = runtime["settings"], kafka_outage["meters"]
    before, during, after = kafka_outage["before"], kafka_outage["during"], kafka_outage["after"]
    down_ms, up_ms = kafka_outage["down_ms"], kafka_outage["up_ms"]
    print(f"kafka: records held by each shard at the end of the outage: "
          f"{ {n: p['buffered_records'] for n, p in during.items()} }")
    for name, p in after.items():
        b = before[name]
        print(f"kafka: {name}: peak {p['buffer_peak_records']} records held "
              f"({p['buffer_max_bytes'] // 2**20} MB allowed), dropped {p['buffer_dropped_records']}, "
              f"delivery failures {p['delivery_failures'] - b['delivery_failures']}, re-produced "
              f"{p['redelivered'] - b['redelivered']}, Modbus connects {p['connects'] - b['connects']}, "
              f"overruns {p['overruns'] - b['overruns']}, p99 poll→ack {p['p99_ms']} ms")
        assert p["pid"] == b["pid"], f"{name} was restarted during the Kafka outage"
        assert p["connects"] == b["connects"], f"{name} reconnected Modbus although only Kafka was down"
        assert p["overruns"] == b["overruns"], f"{name} fell off its slot grid"
        assert p["buffer_dropped_records"] == 0
        # Three meters per connection, one record each per slot: the outage's slots were all held at once.
        assert during[name]["buffered_records"] >= 25 * 3 * len(p["connections"]), during[name]
        assert p["polls_ok"] - b["polls_ok"] >= (up_ms - down_ms) // INTERVAL_MS * 3 * len(p["connections"])

    # The shards' side of the bargain: every slot of every meter reached readings.raw.
    end_ms = up_ms + 5 * INTERVAL_MS
    wait_for(lambda: all(p["buffered_records"] == 0 for p in _shard_pings(runtime)) and _now_ms() > end_ms + LAG_MS,
             60, "the slots after recovery to leave the shards")
    raw: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for item in _raw_items(settings):
        if kafka_outage["start_ms"] <= item.ts_ms < end_ms:
            raw[item.device_id][item.ts_ms] |= ({v.quantity for v in item.values} if not isinstance(item, PollFailure)
                                                else {"failed"})
    lost = {m.device_id: [_iso(s) for s in m.slots(kafka_outage["start_ms"], end_ms)
                          if not (raw[m.device_id][s] >= set(m.quantities) or "failed" in raw[m.device_id][s])][:5]
            for m in meters}
    lost = {d: v for d, v in lost.items() if v}
    assert not lost, f"slots that never reached Kafka: {lost}"


def test_kafka_stopped_for_30s_every_slot_reaches_postgres(runtime: dict, kafka_outage: dict) -> None:
    settings, meters = runtime["settings"], kafka_outage["meters"]
    start_ms, down_ms, up_ms = kafka_outage["start_ms"], kafka_outage["down_ms"], kafka_outage["up_ms"]
    end_ms = max(_now_ms(), up_ms) + 5 * INTERVAL_MS
    print(f"kafka: children restarted so far: {_restarted_since(runtime, kafka_outage['restarts_before'])}; "
          f"stages: {_stage_pings(runtime)}")
    try:
        caught_up = _wait_stored(settings, meters, end_ms, 180, "every meter's slots up to 5 s after recovery")
    finally:
        print(f"kafka: stages after the wait: {_stage_pings(runtime)}")
    print(f"kafka: every series stored up to {_iso(end_ms)} {caught_up:.1f}s later "
          f"({(_now_ms() - up_ms) / 1000:.1f}s after `services up` returned)")
    check = _check_grid(settings, meters, start_ms, end_ms)
    print(f"kafka: window {_iso(start_ms)}..{_iso(end_ms)}, {(down_ms - start_ms) / 1000:.0f}s before, "
          f"{(up_ms - down_ms) / 1000:.0f}s down, {(end_ms - up_ms) / 1000:.0f}s after")
    restarted = _restarted_since(runtime, kafka_outage["restarts_before"])
    print(f"kafka: children restarted: {restarted}")
    _assert_complete(check, "kafka outage")
    # The stages got over it by themselves (a lost group session reopens the consumer), not by dying.
    assert not restarted, f"actors had to be replaced to get over a Kafka restart: {restarted}"
