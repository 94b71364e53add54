"""The analytics copy in the running pipeline: the simulator's readings reach ClickHouse through the ch-writer
actor (its own embedded chDB), device ownership through the devices topic, and the aggregate endpoints answer
from it — the same readings and the same energy as the PostgreSQL archive, to the right callers only."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import ray

from meterray.identity import Role
from meterray.settings import Settings
from storage.kafka import device_topic, topics
from tests.auth_headers import bearer
from tests.conftest import wait_for
from tests.pipeline.helpers import http, sql

A_PLUS = "1-0:1.8.0"


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def test_aggregates_from_clickhouse_match_the_archive_and_answer_only_the_owner(
        runtime: dict, sim_control: str) -> None:
    s: Settings = runtime["settings"]
    api = runtime["api"]
    device = runtime["manifest"][0]["device_id"]
    org, other = uuid.uuid4(), uuid.uuid4()
    sql(s.pg_dsn, "UPDATE devices.devices SET organisation_id = $1 WHERE id = $2", org, device)

    # The device catalog publishes the new owner on the compacted topic.
    def published() -> bool:
        table = device_topic.read_table(s.kafka_bootstrap, s.topic(topics.DEVICES))
        return device in table and device_topic.decode(table[device]).organisation_id == org
    wait_for(published, 60, "the device's new owner on the devices topic")

    # The meter stops answering, so both sinks can catch up to the same last reading.
    assert http("POST", f"{sim_control}/faults", {"device_id": device, "fault": "timeout"})[0] == 200
    try:
        staff = bearer(s, Role.ADMIN)
        start = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
        end = start + timedelta(hours=4)
        query = f"interval=30m&from={start.isoformat()}&to={end.isoformat()}".replace("+", "%2B")
        url = f"{api}/api/v1/devices/{device}/aggregates?{query}"

        def archive() -> tuple[int, float]:
            rows = sql(s.pg_dsn, "SELECT value FROM monitoring.readings WHERE device_id = $1 AND quantity = $2"
                                 " ORDER BY ts", device, A_PLUS)
            return len(rows), rows[-1]["value"] - rows[0]["value"]

        def same_as_archive() -> dict | None:
            status, body = _get(url, staff)
            assert status == 200, body
            n, rise = archive()
            got = sum(i["readings"] for i in body["intervals"])
            time.sleep(1.0)
            return body if n and got == n == archive()[0] else None
        body = wait_for(same_as_archive, 90, "ClickHouse to hold every archived reading of the silent meter", every_s=1)
        n, rise = archive()
        assert abs(body["total_energy"] - rise) < 1e-6 * max(1.0, rise), (body["total_energy"], rise)
        assert body["unit"] == "kWh" and body["interval"] == "30m" and body["device_id"] == device
        assert all(i["devices"] == 1 and i["min"] <= i["last"] <= i["max"] for i in body["intervals"])

        # Its organisation sees the same; the organisation's aggregate holds this one device.
        mine = bearer(s, Role.CUSTOMER, organisation_id=org)
        assert _get(url, mine) == (200, body)
        org_url = f"{api}/api/v1/organisations/{org}/aggregates?{query}"

        def org_copied() -> dict | None:
            status, b = _get(org_url, mine)
            assert status == 200, b
            return b if b["intervals"] and sum(i["readings"] for i in b["intervals"]) == n else None
        org_body = wait_for(org_copied, 60, "the organisation aggregate from the copied owner")
        assert {i["devices"] for i in org_body["intervals"]} == {1}
        assert abs(org_body["total_energy"] - body["total_energy"]) < 1e-9
        daily = _get(f"{api}/api/v1/devices/{device}/aggregates?interval=1d", staff)
        assert daily[0] == 200 and sum(i["readings"] for i in daily[1]["intervals"]) == n

        # Everyone else: 401 without a token, 404 for another organisation's device or organisation.
        assert _get(url)[0] == 401
        stranger = bearer(s, Role.CUSTOMER, organisation_id=other)
        assert _get(url, stranger)[0] == 404
        assert _get(org_url, stranger)[0] == 404
        assert _get(f"{api}/api/v1/devices/no-such-device/aggregates", staff)[0] == 404
        assert _get(f"{api}/api/v1/devices/{device}/aggregates?interval=5m", staff)[0] == 422
        assert _get(f"{api}/api/v1/devices/{device}/aggregates?interval=30m&from=2020-01-01&to=2026-01-01",
                    staff)[0] == 422  # more intervals than one answer holds

        # The writer went through the whole pipeline without dead-lettering or restarting.
        children = ray.get(runtime["supervisor"].status.remote())["children"]
        writer = children["ch-writer-0"]
        assert writer["restarts"] == 0 and writer["last_ping"]["rows"] > 0
        assert children["device-catalog-0"]["last_ping"]["published"] >= len(runtime["manifest"])
    finally:
        http("POST", f"{sim_control}/faults", {"device_id": device, "fault": "none"})
        sql(s.pg_dsn, "UPDATE devices.devices SET organisation_id = NULL WHERE id = $1", device)
