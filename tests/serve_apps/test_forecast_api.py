"""Forecasts over the real Serve app and PostgreSQL: simulated meters' counter readings written to the
archive, the global model trained as a Ray task and registered, then asked for by customers of two
organisations and by platform staff."""
from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
import ray

from actors.forecast_training import train_model
from meterray.identity import Role
from protocols.modbus.profiles import PROFILES
from simulators.meter_model import UTC_OFFSET_S, SimulatedMeter
from storage.postgres.readings import ReadingsWriter
from tests.auth_headers import bearer
from tests.pipeline.helpers import sql
from tests.storage.archive_rows import row

ENERGY = "1-0:1.8.0"
HALF_HOUR = timedelta(minutes=30)
DAYS = 36


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def add_meter(dsn: str, device_id: str, organisation_id: Any, now: datetime, spike_at: datetime | None = None
              ) -> SimulatedMeter:
    """A meter read every half-hour (a disabled connection: nobody polls it), its counter readings
    written for DAYS days up to now: the simulator's exact A+ register at each half-hour; `spike_at`:
    50 kWh more in the half-hour starting then."""
    sql(dsn, "INSERT INTO devices.connections (id, protocol, host, port, poll_interval_s, timeout_s, enabled)"
             " VALUES ($1, 'modbus_tcp', '192.0.2.1', 502, 1800, 1, false) ON CONFLICT DO NOTHING", f"c-{device_id}")
    sql(dsn, "INSERT INTO devices.devices (id, name, protocol, profile, connection_id, unit_id, timezone,"
             " organisation_id) VALUES ($1, $1, 'modbus_tcp', 'sdm630', $2, 1, 'Europe/Moscow', $3)"
             " ON CONFLICT (id) DO NOTHING", device_id, f"c-{device_id}", organisation_id)
    meter = SimulatedMeter(device_id, PROFILES["sdm630"])
    local_midnight = (now + timedelta(seconds=UTC_OFFSET_S)).replace(hour=0, minute=0, second=0, microsecond=0)
    t = local_midnight - timedelta(days=DAYS, seconds=UTC_OFFSET_S)
    rows = []
    while t <= now:
        extra = 50.0 if spike_at is not None and t > spike_at else 0.0
        rows.append(row(device_id, ENERGY, t, 1000.0 + extra + meter.energy_since_install_kwh(t.timestamp())))
        t += HALF_HOUR

    async def write() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await ReadingsWriter().write(conn, rows)
        finally:
            await conn.close()

    asyncio.run(write())
    return meter


@pytest.fixture(scope="module")
def trained(runtime: dict) -> dict:
    settings = runtime["settings"]
    now = datetime.now(timezone.utc)
    org_a, org_b = uuid4(), uuid4()
    devices = {"fc-a1": org_a, "fc-a2": org_a, "fc-b1": org_b}
    meters = {d: add_meter(settings.pg_dsn, d, org, now) for d, org in devices.items()}
    # Yesterday 12:00 Moscow time (UTC+3): a spike, on a meter the model is not trained on.
    spike = (now + timedelta(hours=3)).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=1, hours=3)
    meters["fc-b2"] = add_meter(settings.pg_dsn, "fc-b2", org_b, now, spike_at=spike)
    summary = ray.get(train_model.remote(settings, DAYS, list(devices)), timeout=600)
    return {"settings": settings, "api": runtime["api"], "org_a": org_a, "org_b": org_b, "meters": meters,
            "summary": summary, "spike": spike}


def test_training_registers_a_version_with_its_backtest(trained: dict) -> None:
    s = trained["summary"]
    assert s["devices"] == 3 and s["rows"] > 3 * 20 * 48
    m = s["metrics"]
    assert set(m) == {"model", "seasonal_naive_daily", "seasonal_naive_weekly"}
    # The choice follows the backtest: LightGBM only when it beats the weekly seasonal naive forecast.
    assert s["chosen"] == ("lightgbm" if m["model"]["mase"] < m["seasonal_naive_weekly"]["mase"]
                           else "seasonal_naive_weekly")
    reg = sql(trained["settings"].pg_dsn, "SELECT chosen, devices, train_end - train_start AS days, model IS NOT NULL"
                                          " AS has_model FROM forecasting.models WHERE version = $1", s["version"])
    assert reg[0]["chosen"] == s["chosen"] and reg[0]["devices"] == 3 and reg[0]["days"] == DAYS
    assert reg[0]["has_model"] == (s["chosen"] == "lightgbm")


def test_device_forecast_has_points_and_intervals_close_to_the_meter(trained: dict) -> None:
    settings, api = trained["settings"], trained["api"]
    status, body = get(f"{api}/api/v1/devices/fc-a1/forecast?horizon=48",
                       bearer(settings, Role.CUSTOMER,
                              organisation_id=trained["org_a"]))
    assert status == 200, body
    assert body["device_id"] == "fc-a1" and body["horizon"] == 48 and len(body["points"]) == 48
    assert body["model_version"] == trained["summary"]["version"] and body["method"] == trained["summary"]["chosen"]
    meter = trained["meters"]["fc-a1"]
    errors = []
    for p in body["points"]:
        assert p["lower"] <= p["energy"] <= p["upper"], p
        start = datetime.fromisoformat(p["start"]).timestamp()
        true = meter.energy_since_install_kwh(start + 1800) - meter.energy_since_install_kwh(start)
        errors.append(abs(p["energy"] - true) / true)
    # The simulated load varies ±8 % from day to day around its curve: a day-ahead forecast is within that.
    assert sum(errors) / len(errors) < 0.15, errors
    first = datetime.fromisoformat(body["points"][0]["start"])
    assert first <= datetime.now(timezone.utc) < first + HALF_HOUR


def test_scoping_and_authentication(trained: dict) -> None:
    settings, api = trained["settings"], trained["api"]
    assert get(f"{api}/api/v1/devices/fc-a1/forecast")[0] == 401
    other = bearer(settings, Role.CUSTOMER, organisation_id=trained["org_b"])
    assert get(f"{api}/api/v1/devices/fc-a1/forecast", other)[0] == 404
    assert get(f"{api}/api/v1/devices/no-such/forecast", other)[0] == 404
    assert get(f"{api}/api/v1/organisations/{trained['org_a']}/forecast", other)[0] == 404
    assert get(f"{api}/api/v1/devices/fc-b1/forecast", other)[0] == 200
    staff = bearer(settings, Role.ADMIN, organisation_id=None)
    assert get(f"{api}/api/v1/devices/fc-a1/forecast?horizon=4", staff)[0] == 200
    assert get(f"{api}/api/v1/devices/fc-a1/forecast?horizon=49", staff)[0] == 422


def test_organisation_total_is_the_sum_of_its_devices(trained: dict) -> None:
    settings, api = trained["settings"], trained["api"]
    headers = bearer(settings, Role.CUSTOMER, organisation_id=trained["org_a"])
    status, total = get(f"{api}/api/v1/organisations/{trained['org_a']}/forecast?horizon=6", headers)
    assert status == 200, total
    assert total["devices"] == 2 and total["devices_without_forecast"] == 0 and len(total["points"]) == 6
    parts = [get(f"{api}/api/v1/devices/{d}/forecast?horizon=6", headers)[1] for d in ("fc-a1", "fc-a2")]
    # The API answers 6 decimals: the total and each part are rounded once each (at most 0.5e-6 apiece).
    rounding = (len(parts) + 1) * 0.5e-6 + 1e-12
    for i, p in enumerate(total["points"]):
        assert p["energy"] == pytest.approx(sum(x["points"][i]["energy"] for x in parts), rel=0, abs=rounding)
        assert p["upper"] == pytest.approx(sum(x["points"][i]["upper"] for x in parts), rel=0, abs=rounding)


def test_device_recommendations_carry_their_numbers(trained: dict) -> None:
    settings, api = trained["settings"], trained["api"]
    headers = bearer(settings, Role.CUSTOMER, organisation_id=trained["org_a"])
    status, body = get(f"{api}/api/v1/devices/fc-a1/recommendations?days=28&price_one_rate=5&price_day=6"
                       "&price_night=2&price_peak=8&price_semi_peak=5", headers)
    assert status == 200, body
    t = body["tariff"]
    assert t["days"] == 28 and sum(t["kwh_by_zone"].values()) == pytest.approx(t["kwh_total"])
    z = t["kwh_by_zone"]
    assert t["cost"]["one_rate"] == pytest.approx(5 * t["kwh_total"])
    assert t["cost"]["three_zone"] == pytest.approx(8 * z["peak"] + 5 * z["semi_peak"] + 2 * z["night"])
    assert t["best"] == min(t["cost"], key=t["cost"].get)
    # The simulated shop draws most in the day: its tariff totals match the meter's own integral.
    meter = trained["meters"]["fc-a1"]
    first = datetime.fromisoformat(body["period"]["from"] + "T00:00:00+03:00").timestamp()
    true = meter.energy_since_install_kwh(first + 28 * 86400) - meter.energy_since_install_kwh(first)
    assert t["kwh_total"] == pytest.approx(true, rel=1e-6)
    assert all(7 <= c["start_hour"] < 10 or 17 <= c["start_hour"] < 21 for c in body["peak_shift"]["candidates"])
    assert body["night_baseload"]["abnormal"] is False  # 0.19-0.22 of peak at night vs ~0.8 by day
    assert body["anomalies"]["checked"] is True and body["anomalies"]["half_hours"] == []
    assert get(f"{api}/api/v1/devices/fc-b1/recommendations", headers)[0] == 404


def test_a_spike_is_an_anomaly_against_the_forecast_interval(trained: dict) -> None:
    settings, api = trained["settings"], trained["api"]
    headers = bearer(settings, Role.CUSTOMER, organisation_id=trained["org_b"])
    status, body = get(f"{api}/api/v1/devices/fc-b2/recommendations", headers)
    assert status == 200, body
    found = body["anomalies"]["half_hours"]
    spike = [a for a in found if datetime.fromisoformat(a["start"]) == trained["spike"]]
    assert len(spike) == 1 and spike[0]["kind"] == "above the interval", found
    assert spike[0]["actual_kwh"] > 50 and spike[0]["upper_kwh"] < 10
    status, org = get(f"{api}/api/v1/organisations/{trained['org_b']}/recommendations", headers)
    assert status == 200 and org["devices"] == 2
    assert any(a["device_id"] == "fc-b2" and a["start"] == spike[0]["start"] for a in org["anomalies"]["half_hours"])
    dev = get(f"{api}/api/v1/devices/fc-b1/recommendations", headers)[1]
    assert org["tariff"]["kwh_total"] == pytest.approx(dev["tariff"]["kwh_total"] + body["tariff"]["kwh_total"])


def test_scheduler_trains_and_registers_a_new_version(trained: dict) -> None:
    from actors.forecast_training import ForecastScheduler
    from tests.conftest import wait_for

    settings = trained["settings"]
    scheduler = ForecastScheduler.remote(settings, 3600.0, DAYS)  # type: ignore[attr-defined]
    try:
        ray.get(scheduler.start.remote(), timeout=60)
        last = wait_for(lambda: ray.get(scheduler.last.remote(), timeout=30), 600, "a scheduled training run")
        assert isinstance(last, dict) and "error" not in last, last
        # Every device of the database: the forecast meters have the history, others are too short to use.
        assert last["version"] > trained["summary"]["version"] and last["devices"] >= 4
        assert sql(settings.pg_dsn, "SELECT max(version) AS v FROM forecasting.models")[0]["v"] == last["version"]
    finally:
        ray.kill(scheduler)
