"""The partners API over the real Serve app, PostgreSQL, Kafka and the partner simulator: validation,
versions, secrets (masked, encrypted at rest, never logged), dry runs, signed webhook pushes, backfills."""
from __future__ import annotations

import glob
import json
import os
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import ray

from protocols.http.signing import SIGNATURE_HEADER, sign
from storage.kafka import codec, topics
from tests.conftest import wait_for
from tests.partner_docs import ENERGY, expected_kwh, meters, partner, readings_path
from tests.pipeline.helpers import all_devices, platform_admin, read_topic, sql
from tests.pipeline.helpers import http as anonymous_http

KEY = "sim-key"  # the simulator's API key: the secret under test
HOOK = "hook-secret-7f3a"


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    """Every call of this module's tests as a platform admin (partners:manage, meterray.access)."""
    return anonymous_http(method, url, body, platform_admin())


def _push(api: str, pid: str, path: str, body: bytes, signature: str | None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/octet-stream", **({SIGNATURE_HEADER: signature} if signature else {})}
    req = urllib.request.Request(f"{api}/api/v1/partners/{pid}/webhook?path={path}", data=body, method="POST",
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def test_partners_are_validated_versioned_and_their_secrets_never_shown(runtime: dict, partner_sim: str) -> None:
    settings, api = runtime["settings"], runtime["api"]
    pid, ms = "crud", meters(30, 2)
    doc = partner(pid, partner_sim, [readings_path("r", "json", "page", ms)], ms, enabled=False, webhook_secret=HOOK)

    status, body = http("POST", f"{api}/api/v1/partners", {**doc, "base_url": "nope", "paths": [
        {**doc["paths"][0], "pagination": {"kind": "page", "size": 0}}]})
    assert status == 422 and len(body["detail"]["problems"]) == 2, body
    assert any("base_url" in p and "not an http(s) URL" in p for p in body["detail"]["problems"])
    assert any("paths[0].pagination.page.size" in p for p in body["detail"]["problems"])

    status, body = http("POST", f"{api}/api/v1/partners", doc)
    assert status == 201 and body["version"] == 1, body
    assert body["config"]["auth"]["key"] == "***" and body["config"]["webhook_secret"] == "***"
    try:
        assert http("POST", f"{api}/api/v1/partners", doc)[0] == 409
        # At rest: the document holds masks only; the secrets are a Fernet token.
        row = sql(settings.pg_dsn, "SELECT config::text AS c, secrets FROM partners.partners WHERE id = $1", pid)[0]
        assert KEY not in row["c"] and HOOK not in row["c"] and bytes(row["secrets"]).startswith(b"gAAAA")
        assert KEY.encode() not in bytes(row["secrets"])
        status, listed = http("GET", f"{api}/api/v1/partners")
        assert status == 200 and KEY not in json.dumps(listed) and pid in [p["partner_id"] for p in listed["partners"]]

        # PUT what was read back, with one change: masks keep the stored secrets (the dry run still gets in).
        _, current = http("GET", f"{api}/api/v1/partners/{pid}")
        current["config"]["name"] = "renamed"
        status, body = http("PUT", f"{api}/api/v1/partners/{pid}", current["config"])
        assert status == 200 and body["version"] == 2 and body["config"]["name"] == "renamed"
        status, run = http("POST", f"{api}/api/v1/partners/{pid}/dry-run", {"path": "r"})
        assert status == 200 and run["errors"] == [] and run["readings"], run
        assert http("PUT", f"{api}/api/v1/partners/{pid}", {**doc, "partner_id": "other"})[0] == 422
        assert http("PUT", f"{api}/api/v1/partners/nobody", {**doc, "partner_id": "nobody"})[0] == 404
        # A device id another source owns is refused, with whose it is.
        clash = {**doc, "devices": [{"external_id": "x", "device_id": runtime["manifest"][0]["device_id"]}]}
        status, body = http("PUT", f"{api}/api/v1/partners/{pid}", clash)
        assert status == 422 and "is already registered (modbus_tcp)" in body["detail"]["problems"][0], body
        assert {d["id"] for d in all_devices(api)} >= {f"{pid}-{m}" for m in ms}
    finally:
        assert http("DELETE", f"{api}/api/v1/partners/{pid}")[0] == 204
    assert http("GET", f"{api}/api/v1/partners/{pid}")[0] == 404
    assert not {f"{pid}-{m}" for m in ms} & {d["id"] for d in all_devices(api)}
    assert [(v["version"], v["deleted"]) for v in http("GET", f"{api}/api/v1/partners/{pid}/versions")[1]] == \
        [(1, False), (2, False), (3, True)]
    # Nothing meterray logged (actors, Serve, the supervisor) contains a secret.
    session = ray._private.worker.global_worker.node.get_session_dir_path()
    logs = [p for p in glob.glob(f"{session}/logs/**/*", recursive=True) if os.path.isfile(p)]
    assert any("serve" in p for p in logs) and any("PartnerActor" in p or "worker" in p for p in logs)
    for path in logs:
        with open(path, "rb") as f:
            text = f.read()
        assert KEY.encode() not in text and HOOK.encode() not in text, path


def test_dry_run_fetches_one_page_or_maps_a_sample_and_writes_nothing(runtime: dict, partner_sim: str) -> None:
    settings, api = runtime["settings"], runtime["api"]
    pid, ms = "dry", meters(32, 2)
    doc = partner(pid, partner_sim, [readings_path("r", "json", "page", ms, size=5),
                                     readings_path("c", "csv", "page", ms, size=5)], ms, enabled=False)
    assert http("POST", f"{api}/api/v1/partners", doc)[0] == 201
    try:
        status, run = http("POST", f"{api}/api/v1/partners/{pid}/dry-run", {"path": "r"})
        assert status == 200 and run["fetched"] and run["records"] == 5 and run["next_page"] == {"page": 2}, run
        first = run["readings"][0]
        assert first["device_id"] == f"{pid}-{ms[0]}"
        energy = next(v for v in first["values"] if v["quantity"] == ENERGY)
        assert energy["value"] == expected_kwh(ms[0], first["ts_ms"]) and energy["unit"] == "kWh"

        sample = "meter,time,quantity,value,unit\r\nm-0032,2026-11-26T08:00:00Z,energy,1500,Wh\r\n" \
                 "m-0099,2026-11-26T08:00:00Z,energy,1,Wh\r\nm-0033,2026-11-26T08:00:00Z,energy,lots,Wh\r\n"
        status, run = http("POST", f"{api}/api/v1/partners/{pid}/dry-run", {"path": "c", "sample": sample})
        assert status == 200 and not run["fetched"] and run["records"] == 3
        assert run["readings"] == [{"device_id": f"{pid}-m-0032", "ts_ms": 1_795_680_000_000,
                                    "values": [{"quantity": ENERGY, "value": 1.5, "unit": "kWh"}]}]
        assert [r["reason"] for r in run["refused"]] == [
            "unknown device 'm-0099': not in this partner's devices", "value at 'value' must be a number, got 'lots'"]

        # A changed configuration is tried without storing it; a broken one gets its problems.
        wrong_key = {**doc, "auth": {"kind": "api_key", "key": "wrong"}}
        status, run = http("POST", f"{api}/api/v1/partners/{pid}/dry-run", {"path": "r", "config": wrong_key})
        assert status == 200 and run["errors"][0].startswith("auth: HTTP 401"), run
        status, body = http("POST", f"{api}/api/v1/partners/{pid}/dry-run",
                            {"path": "r", "config": {**doc, "timeout_s": -1}})
        assert status == 422 and "timeout_s" in body["detail"]["problems"][0]
        assert http("POST", f"{api}/api/v1/partners/{pid}/dry-run", {"path": "nope"})[0] == 404
        assert http("GET", f"{api}/api/v1/partners/{pid}")[1]["version"] == 1
        # Nothing written: no cursor, no reading.
        assert not sql(settings.pg_dsn, "SELECT 1 FROM partners.cursors WHERE partner_id = $1", pid)
        assert not sql(settings.pg_dsn, "SELECT 1 FROM monitoring.readings WHERE device_id LIKE $1", f"{pid}-%")
    finally:
        http("DELETE", f"{api}/api/v1/partners/{pid}")


def test_signed_webhook_pushes_feed_the_same_mapping(runtime: dict, partner_sim: str) -> None:
    settings, api = runtime["settings"], runtime["api"]
    pid, ms = "push", meters(34, 2)
    doc = partner(pid, partner_sim, [readings_path("in", "json", "none", ms)], ms, enabled=False,
                  webhook_secret=HOOK)
    assert http("POST", f"{api}/api/v1/partners", doc)[0] == 201
    try:
        at = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=1)
        records = [{"meter": m, "time": (at + timedelta(seconds=s)).isoformat(), "quantity": "energy",
                    "value": 1000.0 * (i + 1) + s, "unit": "Wh"} for i, m in enumerate(ms) for s in range(3)]
        body = orjson.dumps({"data": records + [{"meter": "m-0999", "time": at.isoformat(), "quantity": "energy",
                                                 "value": 1, "unit": "Wh"}]})
        assert _push(api, pid, "in", body, sign("wrong", body))[0] == 401
        assert _push(api, pid, "in", body, None)[0] == 401
        assert _push(api, "nobody", "in", body, sign(HOOK, body))[0] == 401
        assert _push(api, pid, "in", b"{broken", sign(HOOK, b"{broken"))[0] == 422
        status, out = _push(api, pid, "in", body, sign(HOOK, body))
        assert status == 202 and out == {"records": 7, "readings": 6, "status": 0, "refused": 1}, out
        wait_for(lambda: len(sql(settings.pg_dsn, "SELECT 1 FROM monitoring.readings WHERE device_id LIKE $1",
                                 f"{pid}-%")) == 6, 30, "the pushed readings in PostgreSQL")
        rows = sql(settings.pg_dsn, "SELECT device_id, value FROM monitoring.readings WHERE device_id = $1"
                                    " ORDER BY ts", f"{pid}-{ms[1]}")
        assert [r["value"] for r in rows] == [2.0, 2.001, 2.002]
        dead = [codec.decode_dead_letter(v) for _, v in read_topic(settings.kafka_bootstrap,
                                                                    settings.topic(topics.READINGS_DLQ))]
        assert any(d.get("partner") == pid and d["reason"].startswith("unknown device 'm-0999'") for d in dead)
    finally:
        http("DELETE", f"{api}/api/v1/partners/{pid}")


def test_a_backfill_fetches_a_past_range_beside_the_live_schedule(runtime: dict, partner_sim: str) -> None:
    settings, api = runtime["settings"], runtime["api"]
    pid, ms = "past", meters(36, 2)
    doc = partner(pid, partner_sim, [readings_path("r", "json", "offset", ms, size=20, initial_lookback_s=5.0,
                                                   interval_s=1.0)], ms,
                  rate={"requests_per_minute": 6000, "backfill_requests_per_minute": 120})  # backfill: 2 pages/s
    assert http("POST", f"{api}/api/v1/partners", doc)[0] == 201
    try:
        wait_for(lambda: http("GET", f"{api}/api/v1/partners/{pid}/cursors")[1], 30, "the live schedule's cursor")
        start = (datetime.now(timezone.utc) - timedelta(hours=2)).replace(microsecond=0)
        end = start + timedelta(seconds=40)
        asked = time.monotonic()
        status, bf = http("POST", f"{api}/api/v1/partners/{pid}/backfills",
                          {"path": "r", "from": start.isoformat(), "to": end.isoformat()})
        assert status == 202 and bf["status"] == "pending", bf
        live_before = datetime.fromisoformat(http("GET", f"{api}/api/v1/partners/{pid}/cursors")[1][0]["watermark"])
        assert http("POST", f"{api}/api/v1/partners/{pid}/backfills",
                    {"path": "r", "from": end.isoformat(), "to": start.isoformat()})[0] == 422
        done = wait_for(lambda: (b := http("GET", f"{api}/api/v1/partners/{pid}/backfills/{bf['id']}")[1])["status"]
                        == "done" and b, 60, "the backfill to finish")
        took = time.monotonic() - asked
        assert isinstance(done, dict) and done["pages"] == 9 and done["records"] == 160, done
        # At its own rate (2 pages/s, bursts of 2: at least 3.5 s for 9 pages), beside the live schedule,
        # whose watermark moved on meanwhile.
        assert took >= 3.5, took
        live_after = datetime.fromisoformat(http("GET", f"{api}/api/v1/partners/{pid}/cursors")[1][0]["watermark"])
        assert live_after > live_before
        for m in ms:
            def got(m: str = m) -> list:
                return sql(settings.pg_dsn, "SELECT (extract(epoch FROM ts) * 1000)::bigint AS ms, value FROM"
                                            " monitoring.readings WHERE device_id = $1 AND quantity = $2 AND ts >= $3"
                                            " AND ts < $4 ORDER BY ts", f"{pid}-{m}", ENERGY, start, end)

            rows = wait_for(lambda: len(got()) == 40 and got(), 30, "the backfilled range in PostgreSQL")
            assert isinstance(rows, list)
            assert [r["value"] for r in rows] == [expected_kwh(m, r["ms"]) for r in rows]
        # The live schedule ran meanwhile: its watermark is near now, not in the backfilled past.
        cursor = orjson.loads(sql(settings.pg_dsn, "SELECT cursor::text AS c FROM partners.cursors"
                                                   " WHERE partner_id = $1", pid)[0]["c"])
        assert cursor["watermark"] > (datetime.now(timezone.utc) - timedelta(minutes=1)).timestamp() * 1000
    finally:
        http("DELETE", f"{api}/api/v1/partners/{pid}")
