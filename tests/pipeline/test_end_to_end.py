"""Simulated Modbus meters → shards → Kafka → device processor → Kafka → PgWriter → PostgreSQL → API."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from tests.conftest import wait_for
from tests.pipeline.helpers import all_devices, http, platform_admin


def test_every_meter_reaches_the_api_with_plausible_values(runtime: dict) -> None:
    api, manifest = runtime["api"], runtime["manifest"]
    ids = {m["device_id"] for m in manifest}

    def all_current() -> dict | None:
        out = {}
        for device_id in ids:
            status, body = http("GET", f"{api}/api/v1/devices/{device_id}/readings/current", headers=platform_admin())
            if status != 200 or not body["readings"]:
                return None
            out[device_id] = {r["quantity"]: r for r in body["readings"]}
        return out

    current = wait_for(all_current, 90, "current readings of every simulated meter")
    for device_id, readings in current.items():
        assert 200 < readings["1-0:32.7.0"]["value"] < 260, device_id  # voltage L1
        assert 49 < readings["1-0:14.7.0"]["value"] < 51, device_id  # frequency
        assert readings["1-0:1.8.0"]["value"] > 0 and readings["1-0:1.8.0"]["unit"] == "kWh"
        assert readings["1-0:1.8.0"]["quality"] == 0 and readings["1-0:1.8.0"]["quality_flags"] == []

    listed = {d["id"]: d for d in all_devices(api, page_size=5)}  # several pages
    assert ids <= listed.keys()
    assert {listed[i]["protocol"] for i in ids} == {"modbus_tcp"}
    assert {listed[i]["profile"] for i in ids} == {"sdm630", "wb-map3e"}


def test_archive_holds_one_reading_per_poll_and_counters_grow(runtime: dict) -> None:
    api, device_id = runtime["api"], runtime["manifest"][0]["device_id"]

    def history() -> list | None:
        # The window ends when we ask, not when the test started: a pipeline still warming up
        # (this may be the first test of the run) delivers its readings after that instant.
        end = datetime.now(timezone.utc)
        window = f"from={(end - timedelta(minutes=5)).isoformat()}&to={end.isoformat()}".replace("+", "%2B")
        status, body = http("GET", f"{api}/api/v1/devices/{device_id}/readings?quantity=1-0:1.8.0&{window}",
                            headers=platform_admin())
        assert status == 200, body
        return body["readings"] if len(body["readings"]) >= 5 else None

    rows = wait_for(history, 90, "five archived energy readings")
    stamps = [datetime.fromisoformat(r["ts"]) for r in rows]
    assert stamps == sorted(set(stamps))  # no duplicates, in order
    values = [r["value"] for r in rows]
    assert values == sorted(values)  # a cumulative register never decreases here


def test_api_rejects_bad_requests_clearly(runtime: dict) -> None:
    api, device_id = runtime["api"], runtime["manifest"][0]["device_id"]
    status, body = http("GET", f"{api}/api/v1/devices/no-such-meter/readings/current", headers=platform_admin())
    assert status == 404 and "no-such-meter" in body["detail"]
    status, body = http("GET", f"{api}/api/v1/devices/{device_id}/readings?quantity=9.9.9", headers=platform_admin())
    assert status == 422 and "OBIS" in body["detail"]
    backwards = "from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z"
    status, body = http("GET", f"{api}/api/v1/devices/{device_id}/readings?{backwards}", headers=platform_admin())
    assert status == 422 and "earlier" in body["detail"]
    status, _ = http("GET", f"{api}/api/v1/devices/{device_id}/readings?from=yesterday", headers=platform_admin())
    assert status == 422
    status, body = http("GET", f"{api}/healthz", headers=platform_admin())
    assert status == 200 and body == {"status": "ok"}
    status, spec = http("GET", f"{api}/openapi.json", headers=platform_admin())
    assert status == 200 and "/api/v1/devices/{device_id}/readings" in spec["paths"]
