"""Gap backfill end to end on the running runtime: a partner device with a three-hour hole in its
archive → the runtime's scheduled gap scan → a request on `backfill-requests` → the backfill actor
makes one partners.backfills row for the device's partner → the PartnerActor fetches the range from
the partner simulator → device processor → archive → the consumption API shows those half-hours as
measured, not estimated. Re-scans of the same gap, while the backfill is open and after it finished,
make no second row. A request for a Modbus meter, which cannot send the past, is dead-lettered.

The simulator's readings are a pure function of meter and time, so the hole is seeded into the
archive with exactly the values the partner sends later.
"""
from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import pytest
import ray

from meterray.settings import Settings
from simulators import partner_api
from storage.kafka import backfill, codec, topics
from storage.kafka.producer import AsyncProducer
from storage.postgres.readings import ReadingsWriter
from tests.conftest import wait_for
from tests.partner_docs import ENERGY, expected_kwh, partner, readings_path
from tests.pipeline.helpers import db, http, platform_admin, read_topic, sql
from tests.ports import port
from tests.storage.archive_rows import row

PORT = port("backfill-partner")  # a partner simulator of this module's own, with a reading per minute
PID, METER = "bfe", "m-0001"
DEVICE = f"{PID}-{METER}"
MIN = timedelta(minutes=1)
HALF_HOUR = timedelta(minutes=30)


@pytest.fixture(scope="module")
def minute_partner(settings: Settings) -> Iterator[str]:
    proc = partner_api.start(PORT, 2, 60.0, settings.var_dir / "log" / f"partner-sim-{PORT}.log")
    yield f"http://127.0.0.1:{PORT}"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)


def _ping(runtime: dict) -> dict[str, Any]:
    ping: dict[str, Any] = ray.get(runtime["supervisor"].status.remote())["children"]["backfill-0"]["last_ping"]
    return ping


def _backfills(settings: Settings) -> list[dict[str, Any]]:
    return [dict(r) for r in sql(settings.pg_dsn, "SELECT id, partner_id, path, device_id, quantity, since, until,"
                                                  " status, detail, records FROM partners.backfills"
                                                  " WHERE device_id = $1 ORDER BY id", DEVICE)]


def _control(base: str, **faults: Any) -> None:
    status, body = http("POST", f"{base}/control", faults)
    assert status == 200, body


def _seed(settings: Settings, spans: list[tuple[datetime, datetime]]) -> int:
    """The partner's energy readings, one per minute, of each [first, last] span, straight into the archive."""
    rows = []
    for first, last in spans:
        t = first
        while t <= last:
            rows.append(row(DEVICE, ENERGY, t, expected_kwh(METER, int(t.timestamp() * 1000)), source="seed"))
            t += MIN

    async def write(conn: Any) -> None:
        await ReadingsWriter().write(conn, rows)

    db(settings, write)
    return len(rows)


def _consumption(api: str, start: datetime, end: datetime) -> dict[str, Any]:
    query = urlencode({"from": start.isoformat(), "to": end.isoformat()})
    status, body = http("GET", f"{api}/api/v1/devices/{DEVICE}/consumption?{query}", headers=platform_admin())
    assert status == 200, body
    return dict(body)


def _half_hours(body: dict[str, Any], start: datetime, end: datetime) -> list[dict[str, Any]]:
    return [i for i in body["intervals"] if start <= datetime.fromisoformat(i["start"]) < end]


def test_a_partner_gap_is_asked_for_once_fetched_and_then_measured(runtime: dict, minute_partner: str) -> None:
    settings, api = runtime["settings"], runtime["api"]
    now = datetime.now(timezone.utc)
    h0 = now.replace(minute=0 if now.minute < 30 else 30, second=0, microsecond=0)
    a, b, c = h0 - timedelta(hours=6), h0 - timedelta(hours=4), h0 - timedelta(hours=1)
    d = now.replace(second=0, microsecond=0) - 5 * MIN
    # The partner answers 500 to everything for now: the backfill stays open while the scan asks again.
    _control(minute_partner, error_every=1, throttle_every=0)
    path = readings_path("r", "json", "cursor", [METER], size=500, interval_s=30.0, initial_lookback_s=600.0)
    status, body = http("POST", f"{api}/api/v1/partners", partner(PID, minute_partner, [path], [METER],
                                                                     backfill_window_s=86_400),
                        headers=platform_admin())
    assert status == 201, body
    try:
        _seed(settings, [(a, b), (c, d)])
        before = _consumption(api, a, c + HALF_HOUR)
        hole = _half_hours(before, b, c)
        assert len(hole) == 6 and all(i["status"] == "estimated" for i in hole), hole  # meanwhile: estimated
        assert [(g["start"], g["end"]) for g in before["gaps"]] == [(hole[0]["start"], hole[-1]["end"])]

        # The scheduled scan finds the gap, the backfill actor makes one row for the partner's readings path.
        rows = wait_for(lambda: _backfills(settings), 60, "a backfill row for the gap")
        assert isinstance(rows, list)
        assert [(r["partner_id"], r["path"], r["quantity"], r["since"], r["until"]) for r in rows] == [
            (PID, "r", ENERGY, b, c)]
        assert rows[0]["status"] in ("pending", "running")
        # While it is open (the partner failing), every scan asks again and no second row appears.
        asked = _ping(runtime)["already_asked"]
        wait_for(lambda: _ping(runtime)["already_asked"] >= asked + 2, 60, "two more scans asking for the same gap")
        assert [r["id"] for r in _backfills(settings)] == [rows[0]["id"]]
        assert _backfills(settings)[0]["status"] in ("pending", "running")

        _control(minute_partner, error_every=0)  # the partner is back: it sends the range
        done = wait_for(lambda: [r for r in _backfills(settings) if r["status"] == "done"], 90, "the backfill done")
        assert isinstance(done, list) and done[0]["records"] == 2 * 180  # energy and power, each minute of 3 hours

        def measured() -> dict[str, Any] | None:
            body = _consumption(api, a, c + HALF_HOUR)
            hole = _half_hours(body, b, c)
            return body if all(i["status"] == "actual" for i in hole) else None

        after = wait_for(measured, 90, "the hole's half-hours measured in the consumption API")
        assert isinstance(after, dict)
        hole = _half_hours(after, b, c)
        assert len(hole) == 6 and all(i["methods"] == [] and i["complete"] for i in hole), hole
        # 50 Wh per half-hour: the simulator's m-0001 counter grows 1/36 Wh a second.
        assert all(i["energy"] == pytest.approx(0.05, rel=1e-6) for i in hole), [i["energy"] for i in hole]
        assert after["gaps"] == []
        assert sql(settings.pg_dsn, "SELECT count(*) AS n FROM monitoring.readings WHERE device_id = $1"
                                    " AND quantity = $2 AND ts > $3 AND ts < $4", DEVICE, ENERGY, b, c)[0]["n"] == 179

        # Scans after it: the gap is gone, nothing is asked, still the one row.
        scans = _ping(runtime)["scans"]
        wait_for(lambda: _ping(runtime)["scans"] >= scans + 2, 60, "two more scans")
        assert [(r["id"], r["status"]) for r in _backfills(settings)] == [(rows[0]["id"], "done")]
        ping = _ping(runtime)
        print(f"\nbackfill: {ping['scans']} scans so far, the last took {ping['last_scan_ms']} ms; "
              f"{ping['backfills_created']} rows made, {ping['already_asked']} requests already asked for")
    finally:
        _control(minute_partner, error_every=0)
        http("DELETE", f"{api}/api/v1/partners/{PID}", headers=platform_admin())


def test_a_request_no_source_can_serve_is_dead_lettered_with_why(runtime: dict) -> None:
    settings = runtime["settings"]
    modbus = runtime["manifest"][0]["device_id"]
    request = backfill.BackfillRequest(modbus, "modbus_tcp", ENERGY, "2026-11-20T10:00:00+00:00",
                                       "2026-11-20T13:00:00+00:00", 6, "like_day", "2026-11-20T14:00:00+00:00")
    topic = settings.topic(topics.BACKFILL_REQUESTS)

    async def send() -> None:
        async with AsyncProducer(settings.kafka_bootstrap) as producer:
            await producer.send_many([*backfill.messages(settings, [request]),
                                      (topic, 0, b"junk", b'{"device_id": 7}')])

    asyncio.run(send())

    def dead() -> list[dict[str, Any]] | None:
        found = [codec.decode_dead_letter(v) for _, v in read_topic(settings.kafka_bootstrap,
                                                                    settings.topic(topics.READINGS_DLQ))]
        mine = [x for x in found if x.get("stage") == "backfill"]
        return mine if len(mine) >= 2 else None

    letters = wait_for(dead, 60, "both requests dead-lettered by the backfill stage")
    assert isinstance(letters, list)
    by_raw = {x["raw"]: x["reason"] for x in letters}
    assert f"device {modbus!r} (modbus_tcp) has no source that can send readings again" in by_raw[
        backfill.encode(request)]
    assert "not a backfill request" in by_raw[b'{"device_id": 7}']
    assert sql(settings.pg_dsn, "SELECT count(*) AS n FROM partners.backfills WHERE device_id = $1",
               modbus)[0]["n"] == 0
