"""Data partners end to end: partner simulator → PartnerActor → Kafka → device processor → PostgreSQL.

Each check reads the archive a user would query: every slot of a device's readings, each once,
with the simulator's value. The simulator's readings are a pure function of meter and time, so the
expected archive is known exactly.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
import ray

from meterray.settings import Settings
from tests.conftest import wait_for
from tests.partner_docs import ENERGY, expected_kwh, meters, partner, readings_path
from tests.pipeline.helpers import all_devices, http, platform_admin, sql
from tests.ports import port

COMBOS = [("json", "none"), ("json", "page"), ("json", "offset"), ("json", "cursor"), ("json", "link"),
          ("csv", "page"), ("csv", "offset"), ("csv", "cursor"), ("csv", "link"),
          ("xml", "page"), ("xml", "offset"), ("xml", "cursor"), ("xml", "link")]


def _create(api: str, doc: dict[str, Any]) -> dict[str, Any]:
    status, body = http("POST", f"{api}/api/v1/partners", doc, headers=platform_admin())
    assert status == 201, body
    return body


def _delete(api: str, pid: str) -> None:
    http("DELETE", f"{api}/api/v1/partners/{pid}", headers=platform_admin())


def _archive(settings: Settings, device_ids: list[str], since: datetime, until: datetime,
             quantity: str = ENERGY) -> dict[str, dict[int, float]]:
    rows = sql(settings.pg_dsn, "SELECT device_id, (extract(epoch FROM ts) * 1000)::bigint AS ms, value"
                                " FROM monitoring.readings WHERE device_id = ANY($1::text[]) AND quantity = $2"
                                " AND ts >= $3 AND ts < $4 ORDER BY device_id, ts", device_ids, quantity, since, until)
    out: dict[str, dict[int, float]] = {d: {} for d in device_ids}
    for r in rows:
        assert r["ms"] not in out[r["device_id"]]
        out[r["device_id"]][r["ms"]] = r["value"]
    return out


def _complete(settings: Settings, pid: str, ms: list[str], since: datetime, until: datetime) -> bool:
    got = _archive(settings, [f"{pid}-{m}" for m in ms], since, until)
    slots = _slots(since, until)
    return all(len(got[f"{pid}-{m}"]) == len(slots) for m in ms)


def _slots(since: datetime, until: datetime) -> list[int]:
    first = -(-int(since.timestamp() * 1000) // 1000) * 1000
    return list(range(first, int(until.timestamp() * 1000), 1000))


def _assert_exact(settings: Settings, pid: str, ms: list[str], since: datetime, until: datetime) -> None:
    """Every 1 s slot of [since, until) once, with the simulator's value: no gap, no duplicate, no drift."""
    got = _archive(settings, [f"{pid}-{m}" for m in ms], since, until)
    for m in ms:
        series = got[f"{pid}-{m}"]
        assert sorted(series) == _slots(since, until), f"{pid}-{m}: missing slots " \
            f"{sorted(set(_slots(since, until)) - set(series))[:5]}"
        assert all(v == pytest.approx(expected_kwh(m, ts), rel=1e-12) for ts, v in series.items()), m


def _child(runtime: dict, pid: str) -> dict[str, Any]:
    return ray.get(runtime["supervisor"].status.remote())["children"].get(f"partner-{pid}", {})


def test_every_format_and_pagination_kind_reaches_postgresql_exactly(runtime: dict, partner_sim: str) -> None:
    settings, api = runtime["settings"], runtime["api"]
    pid = "fmt"
    paths = [readings_path(f"{fmt}-{paging}", fmt, paging, meters(i + 1, 1), interval_s=3.0)
             for i, (fmt, paging) in enumerate(COMBOS)]
    created = datetime.now(timezone.utc)
    _create(api, partner(pid, partner_sim, paths, meters(1, len(COMBOS))))
    try:
        since, until = created - timedelta(seconds=15), created + timedelta(seconds=5)
        wait_for(lambda: _complete(settings, pid, meters(1, len(COMBOS)), since, until), 90,
                 "every path's readings in PostgreSQL")
        _assert_exact(settings, pid, meters(1, len(COMBOS)), since, until)
        # Power came along (W, as sent), and the devices are meterray devices, listed by the API.
        power = sql(settings.pg_dsn, "SELECT count(*) AS n FROM monitoring.readings WHERE device_id = $1"
                                     " AND quantity = '1-0:16.7.0'", f"{pid}-m-0001")[0]["n"]
        assert power > 0
        listed = {d["id"]: d for d in all_devices(api)}
        assert all(listed[f"{pid}-{m}"]["protocol"] == "partner_http" and listed[f"{pid}-{m}"]["status"] == "online"
                   for m in meters(1, len(COMBOS)))
        ping = _child(runtime, pid)["last_ping"]
        assert set(ping["paths"]) == {p["name"] for p in paths} and all(
            s["pages"] > 1 and s["refused"] == 0 for n, s in ping["paths"].items() if not n.endswith("-none")), ping
    finally:
        _delete(api, pid)


def _control(base: str, **faults: Any) -> None:
    status, body = http("POST", f"{base}/control", faults)
    assert status == 200, body


def _sim_stats(base: str) -> dict[str, Any]:
    status, body = http("GET", f"{base}/stats")
    assert status == 200
    return dict(body)


def test_a_partner_actor_killed_mid_run_resumes_from_its_saved_page(runtime: dict, partner_sim_2: str) -> None:
    settings, api = runtime["settings"], runtime["api"]
    pid, ms = "resume", meters(1, 2)
    _control(partner_sim_2, slow_every=1, slow_s=0.3, throttle_every=0, error_every=0)
    path = readings_path("r", "json", "cursor", ms, size=10, initial_lookback_s=60.0, interval_s=2.0)
    created = datetime.now(timezone.utc)
    _create(api, partner(pid, partner_sim_2, [path], ms))
    try:
        def mid_run() -> dict | None:
            rows = sql(settings.pg_dsn, "SELECT cursor::text AS c FROM partners.cursors WHERE partner_id = $1", pid)
            c = orjson.loads(rows[0]["c"]) if rows else {}
            return c if c.get("run") and len(c["run"]["state"].get("cursor", "")) and _pages(c) >= 3 else None

        def _pages(c: dict) -> int:
            import base64

            return int(base64.urlsafe_b64decode(c["run"]["state"]["cursor"]).decode()) // 10

        saved = wait_for(mid_run, 60, "the first run to save a page past the third")
        assert isinstance(saved, dict)
        handle = next(h for h in ray.get(runtime["supervisor"].handles.remote("partner"))
                      if ray.get(h.ping.remote())["partner"] == pid)
        ray.kill(handle, no_restart=True)
        killed_at = time.monotonic()
        wait_for(lambda: _child(runtime, pid).get("restarts") == 1 and _child(runtime, pid)["last_ping"].get("pid"),
                 30, "the supervisor to replace the partner actor")
        since, until = created - timedelta(seconds=55), created + timedelta(seconds=2)
        wait_for(lambda: _complete(settings, pid, ms, since, until), 90, "the interrupted run to complete")
        print(f"\nkilled mid-run at page {_pages(saved)}; archive complete {time.monotonic() - killed_at:.1f} s later")
        _assert_exact(settings, pid, ms, since, until)
        # The replacement went on from the saved page: the first run's window was started once only.
        first_since = str(saved["run"]["since"])
        firsts = {k: v for k, v in _sim_stats(partner_sim_2)["first_pages"].items() if k == first_since}
        assert firsts == {first_since: 1}, firsts
    finally:
        _delete(api, pid)
        _control(partner_sim_2, slow_every=0)


def test_expiring_tokens_429_and_500_lose_nothing(runtime: dict, partner_sim_2: str) -> None:
    settings, api = runtime["settings"], runtime["api"]
    pid, ms = "rough", meters(3, 2)
    before = _sim_stats(partner_sim_2)
    _control(partner_sim_2, token_ttl_s=2.0, throttle_every=4, retry_after_s=1.0, error_every=7, slow_every=0)
    auth = {"kind": "oauth2", "token_url": f"{partner_sim_2}/oauth/token", "client_id": "meterray",
            "client_secret": "sim-secret"}
    created = datetime.now(timezone.utc)
    _create(api, partner(pid, partner_sim_2, [readings_path("r", "xml", "page", ms, size=8, interval_s=1.0)], ms,
                         auth=auth))
    try:
        wait_for(lambda: _sim_stats(partner_sim_2)["tokens"] - before["tokens"] >= 3, 60,
                 "several tokens to expire and be renewed")
        _control(partner_sim_2, revoke=True)  # every token dies early: a 401 mid-run, then a fresh token
        since, until = created - timedelta(seconds=15), datetime.now(timezone.utc) + timedelta(seconds=3)
        wait_for(lambda: _complete(settings, pid, ms, since, until), 60, "every slot despite the trouble")
        _assert_exact(settings, pid, ms, since, until)
        after = _sim_stats(partner_sim_2)
        assert after["throttled"] > before["throttled"] and after["errors"] > before["errors"]
        client = _child(runtime, pid)["last_ping"]["client"]
        assert client["throttled"] >= 1 and client["retries"] >= 1 and client["unauthorized"] >= 1, client
        assert client["token_fetches"] >= 4, client
    finally:
        _delete(api, pid)
        _control(partner_sim_2, token_ttl_s=3600, throttle_every=0, error_every=0)


def test_device_status_from_a_partner_reaches_the_device_state(runtime: dict, partner_sim_2: str) -> None:
    api = runtime["api"]
    pid, ms = "health", meters(6, 3)
    _control(partner_sim_2, offline=[ms[1]], alarm={ms[2]: {"battery": 5, "error": "E17"}})
    path = {"name": "status", "url": "/api/json/none/status", "records": "data", "interval_s": 1.0,
            "status": {"device": "meter", "timestamp": "time", "status": "state", "error_code": "error",
                       "battery": "battery", "tamper": "tamper"}}
    _create(api, partner(pid, partner_sim_2, [path], ms))
    try:
        def states() -> dict | None:
            d = {x["id"]: x for x in all_devices(api)}
            s = {m: d.get(f"{pid}-{m}", {}) for m in ms}
            ok = (s[ms[0]].get("status") == "online" and s[ms[1]].get("status") == "offline"
                  and s[ms[2]].get("status") == "degraded")
            return s if ok else None

        s = wait_for(states, 30, "the partner's view of its meters in their state")
        assert isinstance(s, dict)
        # The partner's word is a status signal with its reasons (meterray.health), not a failed poll.
        assert s[ms[1]]["reasons"] == ["partner_offline"]
        assert s[ms[2]]["reasons"] == ["partner_error"]  # "error code E17; battery low (5 %)" from the mapping
        _control(partner_sim_2, offline=[], alarm={})
        wait_for(lambda: all(x["status"] == "online" for x in all_devices(api) if x["id"].startswith(f"{pid}-")), 30,
                 "the meters online again once the partner says so")
    finally:
        _delete(api, pid)
        _control(partner_sim_2, offline=[], alarm={})


def test_changing_one_partners_mapping_leaves_every_other_stream_uninterrupted(runtime: dict,
                                                                               partner_sim: str) -> None:
    from tests.pipeline.test_reconfigure import _all_have_readings_after, _stamps

    settings, api = runtime["settings"], runtime["api"]
    a, b = "reload-a", "reload-b"
    ma, mb = meters(20, 2), meters(22, 2)
    doc_a = partner(a, partner_sim, [readings_path("r", "json", "page", ma, interval_s=1.0)], ma)
    _create(api, doc_a)
    _create(api, partner(b, partner_sim, [readings_path("r", "csv", "cursor", mb, interval_s=1.0),
                                          readings_path("r2", "json", "none", mb, interval_s=1.0)], mb))
    originals = [m["device_id"] for m in runtime["manifest"]]
    try:
        start = datetime.now(timezone.utc)
        wait_for(lambda: _complete(settings, b, mb, start - timedelta(seconds=5), start)
                 and _all_have_readings_after(settings, originals, start), 60, "every stream to run")
        before = ray.get(runtime["supervisor"].status.remote())["children"]
        t0 = datetime.now(timezone.utc)
        # The mapping of partner A changes: its energy now lands as export (1-0:2.8.0).
        changed = {**doc_a, "paths": [{**doc_a["paths"][0], "readings": {
            **doc_a["paths"][0]["readings"], "quantity_map": {"energy": "1-0:2.8.0", "power": "1-0:16.7.0"}}}]}
        status, body = http("PUT", f"{api}/api/v1/partners/{a}", changed, headers=platform_admin())
        assert status == 200 and body["version"] == 2, body
        wait_for(lambda: sql(settings.pg_dsn, "SELECT 1 FROM monitoring.readings WHERE device_id = $1"
                                              " AND quantity = '1-0:2.8.0' LIMIT 1", f"{a}-{ma[0]}"), 30,
                 "partner A's new mapping to take effect")
        t1 = datetime.now(timezone.utc) + timedelta(seconds=2)
        wait_for(lambda: _complete(settings, b, mb, t0, t1) and _all_have_readings_after(
            settings, originals, t1 + timedelta(seconds=1)), 60, "every stream past the change")
        after = ray.get(runtime["supervisor"].status.remote())["children"]
    finally:
        _delete(api, a)
        _delete(api, b)
    # A was reconfigured in place (same process), B and every Modbus shard were not touched at all.
    pa, pb = f"partner-{a}", f"partner-{b}"
    assert after[pa]["last_ping"]["pid"] == before[pa]["last_ping"]["pid"] and after[pa]["version"] == 2
    assert after[pa]["last_ping"]["reconfigured"] == 1 and after[pa]["restarts"] == 0
    assert after[pb]["last_ping"]["reconfigured"] == 0 and after[pb]["restarts"] == 0
    assert after[pb]["last_ping"]["pid"] == before[pb]["last_ping"]["pid"]
    shards = {n: c for n, c in after.items() if c["role"] == "modbus-shard"}
    assert all(c["restarts"] == before[n]["restarts"] and c["started"] == before[n]["started"]
               for n, c in shards.items() if n in before)
    _assert_exact(settings, b, mb, t0, t1)
    for device_id in originals:  # every Modbus slot of [t0, t1) exactly once
        stamps = _stamps(settings, device_id, t0, t1)
        assert stamps and {y - x for x, y in zip(stamps, stamps[1:], strict=False)} == {1000}, device_id


def test_the_demos_two_partners_stream_readings_and_status(runtime: dict) -> None:
    import os
    import signal

    from meterray.app.demo_partners import start_demo_partners

    settings, api = runtime["settings"], runtime["api"]
    proc = start_demo_partners(settings, port("demo-partners"))
    try:
        status, body = http("GET", f"{api}/api/v1/partners", headers=platform_admin())
        assert status == 200 and {"acme", "volta"} <= {p["partner_id"] for p in body["partners"]}

        def reporting() -> bool:
            rows = sql(settings.pg_dsn, "SELECT count(DISTINCT device_id) AS n FROM monitoring.readings_current"
                                        " WHERE device_id LIKE 'acme-%' OR device_id LIKE 'volta-%'")
            online = [d for d in all_devices(api)
                      if d["id"].startswith(("acme-", "volta-")) and d["status"] == "online"]
            return rows[0]["n"] == 10 and len(online) == 10

        wait_for(reporting, 60, "the demo partners' 10 meters online with current readings")
    finally:
        _delete(api, "acme")
        _delete(api, "volta")
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def test_a_partner_that_cannot_be_read_is_reported_and_every_other_one_runs(runtime: dict, partner_sim: str) -> None:
    settings, api = runtime["settings"], runtime["api"]
    ok, ms = "fine", meters(24, 1)
    _create(api, partner(ok, partner_sim, [readings_path("r", "json", "page", ms, interval_s=1.0)], ms))
    good_doc = partner("unsealable", partner_sim, [readings_path("r", "json", "page", ms)], [])
    # Stored by hand as an older version or another key would have left them: secrets the key cannot
    # open, and a document today's rules refuse.
    sql(settings.pg_dsn, "INSERT INTO partners.partners (id, config, secrets) VALUES"
                         " ('unsealable', $1::jsonb, $2), ('outdated', $3::jsonb, NULL)",
        orjson.dumps({**good_doc, "auth": {"kind": "api_key", "key": "***"}}).decode(), b"not a fernet token",
        orjson.dumps({"partner_id": "outdated", "base_url": "gopher://old"}).decode())
    try:
        since = datetime.now(timezone.utc)
        wait_for(lambda: _complete(settings, ok, ms, since, since + timedelta(seconds=3)), 60,
                 "the readable partner to stream")
        status = ray.get(runtime["supervisor"].status.remote())
        problems = status["partner_problems"]
        assert "cannot be decrypted" in problems["unsealable"] and "not an http(s) URL" in problems["outdated"]
        assert "partner-unsealable" not in status["children"] and "partner-outdated" not in status["children"]
        code, listed = http("GET", f"{api}/api/v1/partners", headers=platform_admin())
        assert code == 200 and ok in [p["partner_id"] for p in listed["partners"]]
        assert set(listed["unreadable"]) >= {"unsealable", "outdated"}
        code, body = http("GET", f"{api}/api/v1/partners/outdated", headers=platform_admin())
        assert code == 409 and "PUT a complete document" in body["detail"]
        # A complete document replaces it, and it runs.
        fixed = partner("outdated", partner_sim, [readings_path("r", "json", "page", meters(25, 1),
                                                                interval_s=1.0)], meters(25, 1))
        code, body = http("PUT", f"{api}/api/v1/partners/outdated", fixed, headers=platform_admin())
        assert code == 200 and body["version"] == 2, body
        wait_for(lambda: _complete(settings, "outdated", meters(25, 1), since, since + timedelta(seconds=3)), 60,
                 "the replaced partner to stream")
    finally:
        for pid in (ok, "unsealable", "outdated"):
            _delete(api, pid)
