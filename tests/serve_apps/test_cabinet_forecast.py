"""The cabinet's forecasts, recommendations and year chart in a real browser (Playwright on Debian's chromium)
against the running pipeline: a customer signed up through the cabinet owns a meter with five weeks of
half-hourly history (nobody polls it) and a meter with a year of half-hours in the ClickHouse copy.

Before a forecasting model exists the pages say so and what to do; then the model is trained on the meter's
history through the project's own training task (actors.forecast_training.train_model, few rounds: seconds),
and the device chart's band, the dashboard's expected totals and the recommendations page show the numbers
the forecasting and recommendations APIs answer for the same device and organisation."""
from __future__ import annotations

import asyncio
import json
import math
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import ray
from playwright.sync_api import Browser, Page, expect

from actors.forecast_training import train_model
from meterray.domain import ReadingBatch, Value
from meterray.identity import Role
from meterray.settings import Settings
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer
from tests.auth_headers import bearer
from tests.conftest import wait_for
from tests.serve_apps.cabinet_browser import PASSWORD, login, shot, signed_up, sql
from tests.serve_apps.test_forecast_api import DAYS, add_meter

EMAIL = "prognoz@zavod.example"
METER = "cabfc-meter"  # five weeks of half-hours in the archive: forecast and recommendations
YEAR = "cabfc-year"  # a year of half-hours, through Kafka into both sinks (PostgreSQL and ClickHouse)
ENERGY = "1-0:1.8.0"
MOSCOW = ZoneInfo("Europe/Moscow")
YEAR_HALF_HOURS = 365 * 48
# A chart waits for its data: a year from ClickHouse takes seconds, many more on a loaded 2-core machine.
CHART_WAIT_MS = 120_000
ROUNDS = 30  # boosting rounds: a small model trains in seconds and still forecasts every half-hour


def _get(url: str, headers: dict[str, str]) -> Any:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        raise AssertionError(f"{url}: {err.code} {err.read()[:300]!r}") from None


def _in_thread(fn: Any, *args: Any) -> Any:
    """Playwright's sync API keeps an event loop running in the test's thread: asyncio work runs beside it."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def _number(text: str) -> float:
    """A number as the Russian locale writes it ("1 234,5") out of a text."""
    found = re.search(r"-?\d[\d\u00a0\u202f ]*(?:,\d+)?", text)
    assert found, text
    return float(re.sub(r"[\u00a0\u202f ]", "", found.group()).replace(",", "."))


def _ru(value: float, digits: int = 1) -> re.Pattern[str]:
    """`value` as the Russian locale writes it: digits grouped by a (narrow) no-break space, a decimal comma."""
    text = re.escape(f"{value:,.{digits}f}".replace(",", "G").replace(".", ","))
    return re.compile(text.replace("G", "[\u00a0\u202f ]"))


def _year_energy(i: int) -> float:
    """The year meter's half-hour i: a daily curve 0.50..0.97 kWh (exact in binary after rounding to 1/100)."""
    return 0.5 + (i % 48) * 0.01


async def _send_year(s: Settings, start: datetime) -> int:
    """The year meter's A+ register every half-hour from `start` (a year and one reading) to the readings topic,
    as the device processor publishes them: the PostgreSQL writer and the ClickHouse writer both consume it."""
    register, batches = 5000.0, []
    for i in range(YEAR_HALF_HOURS + 1):
        ts = int((start + i * timedelta(minutes=30)).timestamp() * 1000)
        batches.append(ReadingBatch(YEAR, ts, "test", (Value(ENERGY, round(register, 2), "kWh", 0),)))
        register += _year_energy(i)
    async with AsyncProducer(s.kafka_bootstrap) as p:
        await p.send_many((s.topic(topics.READINGS), topics.partition_for(YEAR, s.kafka_partitions), YEAR.encode(),
                           codec.encode(b)) for b in batches)
    return len(batches)


@pytest.fixture(scope="module")
def customer(browser: Browser, base: str, runtime: dict) -> dict:
    settings: Settings = runtime["settings"]
    dsn = settings.pg_dsn
    org = signed_up(browser, base, dsn, 9421, EMAIL, "ЭС-2026/94")
    now = datetime.now(timezone.utc)
    meter = _in_thread(add_meter, dsn, METER, org, now)
    sql(dsn, "UPDATE devices.devices SET name = 'Ввод 2, склад' WHERE id = $1", METER)
    return {"settings": settings, "org": org, "meter": meter, "headers": bearer(settings, Role.CUSTOMER,
                                                                                organisation_id=org)}


@pytest.fixture(scope="module")
def trained(customer: dict) -> dict:
    settings = customer["settings"]
    started = time.monotonic()
    summary = ray.get(train_model.remote(settings, DAYS, [METER], ROUNDS), timeout=600)
    print(f"\nforecast model v{summary['version']} ({summary['chosen']}) trained in "
          f"{time.monotonic() - started:.1f} s (fit {summary['training_seconds']:.1f} s)")
    return {**customer, "summary": summary}


@pytest.fixture(scope="module")
def year_meter(customer: dict, runtime: dict) -> dict:
    settings: Settings = customer["settings"]
    sql(settings.pg_dsn, "INSERT INTO devices.devices (id, name, protocol, profile, timezone, organisation_id)"
                         " VALUES ($1, 'Ввод 3, год', 'mqtt', 'mqtt', 'Europe/Moscow', $2)", YEAR, customer["org"])
    now = datetime.now(timezone.utc)
    end = now.replace(minute=30 * (now.minute // 30), second=0, microsecond=0)
    start = end - timedelta(days=365)
    sent = _in_thread(asyncio.run, _send_year(settings, start))
    api = runtime["api"]
    query = f"interval=30m&from={start.isoformat()}&to={(end + timedelta(minutes=30)).isoformat()}".replace("+", "%2B")

    def copied() -> dict | None:  # the ClickHouse copy holds every half-hour (each with its reading)
        body = _get(f"{api}/api/v1/devices/{YEAR}/aggregates?{query}", customer["headers"])
        return body if sum(i["readings"] for i in body["intervals"]) == sent else None
    body = wait_for(copied, 300, "the year of half-hours in the ClickHouse copy", every_s=2)
    return {**customer, "aggregates": body, "sent": sent}


def _login(page: Page) -> None:
    login(page, EMAIL, PASSWORD)
    expect(page.locator(".who")).to_contain_text(EMAIL)


def test_without_a_model_the_pages_say_when_the_forecast_comes(page: Page, customer: dict) -> None:
    # This module's first test: a model another module may have registered in this run's database is
    # removed, so that the page a new installation shows is the one checked (this module trains its own next).
    sql(customer["settings"].pg_dsn, "DELETE FROM forecasting.models")
    _login(page)
    page.goto(f"/devices/{METER}")
    note = page.locator("#forecast-note")
    expect(note).to_have_attribute("data-state", "no_model")
    expect(note).to_contain_text("Прогноз появится после обучения модели")
    expect(note).to_contain_text("meterray forecast train")
    chart = page.locator("#consumption-chart")
    expect(chart).to_have_attribute("data-drawn", "1", timeout=CHART_WAIT_MS)
    assert chart.get_attribute("data-band-points") == "0" and chart.get_attribute("data-forecast") == "no_model"
    shot(page, "device-no-forecast")
    page.goto("/")
    expect(page.locator("#forecast-none")).to_contain_text("Прогноз появится после обучения модели")
    expect(page.locator("#today-forecast")).to_have_count(0)
    page.goto("/recommendations")
    card = page.locator(f"[data-device={METER}]")
    expect(card).to_contain_text("Сравнение с прогнозом появится после обучения модели")
    expect(card.locator("[data-tariff=one_rate]")).to_be_visible()  # the tariff needs no model


def _chart_columns(page: Page) -> list[list[float | None]]:
    cols: list[list[float | None]] = page.evaluate(
        "Array.from(document.getElementById('consumption-chart').uplot.data, a => Array.from(a))")
    return cols


def test_device_chart_draws_the_forecast_band_of_the_forecast_api(page: Page, trained: dict, runtime: dict) -> None:
    api, headers = runtime["api"], trained["headers"]
    _login(page)
    for _attempt in range(3):  # a half-hour may turn between the page and the API's answer: then again
        page.goto(f"/devices/{METER}")
        chart = page.locator("#consumption-chart")
        expect(chart).to_have_attribute("data-drawn", "1", timeout=CHART_WAIT_MS)
        expect(chart).to_have_attribute("data-forecast", "ok", timeout=CHART_WAIT_MS)
        forecast = _get(f"{api}/api/v1/devices/{METER}/forecast?horizon=48", headers)
        x, actual, point, lower, upper = _chart_columns(page)
        drawn = {t: (p, lo, hi) for t, p, lo, hi in zip(x, point, lower, upper, strict=True) if hi is not None}
        if all(datetime.fromisoformat(p["start"]).timestamp() in drawn for p in forecast["points"]):
            break
    else:
        pytest.fail("the chart's band never covered the forecast API's next 48 half-hours")
    assert forecast["model_version"] == trained["summary"]["version"]
    # Every half-hour the API forecasts is drawn with the API's own numbers (line, lower and upper bound).
    for p in forecast["points"]:
        got = drawn[datetime.fromisoformat(p["start"]).timestamp()]
        assert got == pytest.approx((p["energy"], p["lower"], p["upper"]), rel=1e-9), (p, got)
    # Before them, today's half-hours from the local midnight (forecast at midnight), beside the measured bars.
    first = datetime.fromisoformat(forecast["points"][0]["start"])
    midnight = first.astimezone(MOSCOW).replace(hour=0, minute=0)
    earlier = sorted(t for t in drawn if t < first.timestamp())
    assert (earlier[0] if earlier else first.timestamp()) == midnight.timestamp()
    assert len(earlier) == (first - midnight) / timedelta(minutes=30)
    band_points = int(page.locator("#consumption-chart").get_attribute("data-band-points") or 0)
    assert band_points == len(drawn) == 48 + len(earlier)
    both = [i for i, t in enumerate(x) if t in drawn and actual[i] is not None]
    assert len(both) >= len(earlier)  # the past half-hours of today have a bar and a band
    # A band, not a line: the lower bound under the upper (the point may lie outside it when the weekly naive
    # forecast was chosen: its bounds are the backtest's error quantiles times the naive value).
    assert all(p is not None and lo is not None and lo <= hi for p, lo, hi in drawn.values())
    assert any(lo is not None and lo < hi for _, lo, hi in drawn.values())
    expect(page.locator("#forecast-note")).to_contain_text(f"версии {forecast['model_version']}")
    expect(page.locator("#forecast-today")).to_contain_text("Прогноз на сегодня")
    shot(page, "device-forecast")

    # Hours: each the sum of its two half-hours.
    page.locator("[data-chart-switch=consumption] a[data-interval='1h']").click()
    chart = page.locator("#consumption-chart")
    expect(chart).to_have_attribute("data-interval", "1h", timeout=CHART_WAIT_MS)
    expect(chart).to_have_attribute("data-drawn", "1", timeout=CHART_WAIT_MS)
    x, _, point, _, upper = _chart_columns(page)
    halves = {datetime.fromisoformat(p["start"]).timestamp(): p for p in forecast["points"]}
    checked = 0
    for t, p, hi in zip(x, point, upper, strict=True):
        if t in halves and t + 1800 in halves and p is not None:
            assert p == pytest.approx(halves[t]["energy"] + halves[t + 1800]["energy"], rel=1e-6)
            assert hi == pytest.approx(halves[t]["upper"] + halves[t + 1800]["upper"], rel=1e-6)
            checked += 1
    assert checked >= 22, checked
    # Days are beyond the model's horizon: no band, and the page says why.
    page.locator("[data-chart-switch=consumption] a[data-interval='1d']").click()
    expect(chart).to_have_attribute("data-forecast", "interval", timeout=CHART_WAIT_MS)
    assert chart.get_attribute("data-band-points") == "0"
    expect(page.locator("#forecast-chart-note")).to_contain_text("30 мин и 1 час")


def test_dashboard_shows_the_organisations_forecast_beside_today_and_month(page: Page, trained: dict,
                                                                          runtime: dict) -> None:
    api, headers = runtime["api"], trained["headers"]
    _login(page)

    def next_day() -> re.Pattern[str]:
        f = _get(f"{api}/api/v1/organisations/{trained['org']}/forecast?horizon=48", headers)
        return _ru(sum(p["energy"] or 0.0 for p in f["points"]))
    before = next_day()
    page.goto("/")
    shown = page.locator("#next-day").inner_text()
    after = next_day()
    # The next 24 hours: the organisation forecast API's sum (asked before and after: a half-hour may turn).
    assert before.match(shown) or after.match(shown), (shown, before.pattern, after.pattern)
    today, month = _number(page.locator("#today").inner_text()), _number(page.locator("#month").inner_text())
    today_fc = _number(page.locator("#today-forecast").inner_text())
    month_fc = _number(page.locator("#month-forecast").inner_text())
    # Expected by the end of the day: today's use and more; by the month's end at least that and the month so far.
    assert today_fc >= today > 0 and month_fc >= month >= today and month_fc >= today_fc
    expect(page.locator("#today-forecast")).to_contain_text("Ожидается к концу дня")
    expect(page.locator("#forecast")).to_contain_text("модель версии")
    shot(page, "dashboard-forecast")


def test_recommendations_page_shows_the_apis_numbers_per_device(page: Page, trained: dict, runtime: dict) -> None:
    api, headers = runtime["api"], trained["headers"]
    _login(page)
    page.goto("/recommendations")
    expect(page.locator("h1")).to_have_text("Рекомендации")
    expect(page.locator("nav a[href='/recommendations'] .soon")).to_have_count(0)
    body = _get(f"{api}/api/v1/devices/{METER}/recommendations?days=28", headers)
    card = page.locator(f"[data-device={METER}]")
    t = body["tariff"]
    for name, cost in t["cost"].items():
        cell = card.locator(f"[data-tariff={name}] td")
        assert float(cell.get_attribute("data-value") or "nan") == pytest.approx(cost, rel=1e-9)
        expect(cell).to_contain_text(_ru(cost, 2))
    expect(card.locator(f"[data-tariff={t['best']}]")).to_have_class("best")
    expect(card.locator("[data-field=zones]")).to_contain_text(_ru(t["kwh_total"], 1))
    first = datetime.fromisoformat(body["period"]["from"]).strftime("%d.%m.%Y")
    last = datetime.fromisoformat(body["period"]["to"]).strftime("%d.%m.%Y")
    expect(card.locator("[data-field=period]")).to_contain_text(f"с {first} по {last}")
    rows = card.locator(".rec-peak tbody tr")
    expect(rows).to_have_count(len(body["peak_shift"]["candidates"]))
    for i, c in enumerate(body["peak_shift"]["candidates"]):
        hour, minute = divmod(int(c["start_hour"] * 60), 60)
        expect(rows.nth(i)).to_contain_text(f"{hour:02d}:{minute:02d}–")
        assert float(rows.nth(i).locator("td").nth(1).get_attribute("data-value") or "nan") == pytest.approx(
            c["mean_kwh"], rel=1e-9)
    expect(card.locator("[data-field=peak-advice]")).to_contain_text(_ru(body["peak_shift"]["saving_per_year"], 2))
    expect(card.locator("[data-field=anomalies]")).to_contain_text("в пределах прогноза")
    # The organisation's card sums its meters (the archive meter and, when written, the year meter).
    org = _get(f"{api}/api/v1/organisations/{trained['org']}/recommendations?days=28", headers)
    one_rate = org["tariff"]["cost"]["one_rate"]
    expect(page.locator("#rec-org [data-tariff=one_rate] td")).to_contain_text(_ru(one_rate, 2))
    shot(page, "recommendations")
    # Other prices: the page asks the API with them.
    page.get_by_label("Ночь, ₽/кВт·ч").fill("1")
    page.get_by_role("button", name="Пересчитать").click()
    expect(page).to_have_url(re.compile(r"price_night=1"))
    cheap = _get(f"{api}/api/v1/devices/{METER}/recommendations?days=28&price_night=1", headers)
    cell = card.locator("[data-tariff=two_zone] td")
    two_zone = cheap["tariff"]["cost"]["two_zone"]
    assert float(cell.get_attribute("data-value") or "nan") == pytest.approx(two_zone, rel=1e-9)
    # Each device links to its page; the page reads in English too.
    card.get_by_role("link", name="Ввод 2, склад").click()
    expect(page).to_have_url(re.compile(f"/devices/{METER}$"))
    page.goto("/lang/en?next=/recommendations")
    expect(page.locator(f"[data-device={METER}]")).to_contain_text("Tariff")
    expect(page.locator(f"[data-device={METER}] [data-field=period]")).to_contain_text("Computed over 28 whole days")
    shot(page, "recommendations-en")


def test_a_year_of_half_hours_on_one_chart(page: Page, year_meter: dict) -> None:
    _login(page)
    page.goto(f"/devices/{YEAR}")
    chart = page.locator("#consumption-chart")
    expect(chart).to_have_attribute("data-drawn", "1", timeout=CHART_WAIT_MS)
    link = page.locator("[data-chart-switch=consumption] a[data-interval='year']")
    expect(link).to_have_text("Год (30 мин)")
    clicked = time.monotonic()
    link.click()
    expect(chart).to_have_attribute("data-interval", "year", timeout=CHART_WAIT_MS)
    expect(chart).to_have_attribute("data-drawn", "1", timeout=CHART_WAIT_MS)
    click_to_chart_s = time.monotonic() - clicked
    points = int(chart.get_attribute("data-points") or 0)
    draw_ms = float(chart.get_attribute("data-draw-ms") or "nan")
    x, y = _chart_columns(page)
    assert points >= 17_000 and len(x) == YEAR_HALF_HOURS, (points, len(x))
    # The values drawn are the aggregates API's: each half-hour's energy as written, and the same total.
    intervals = year_meter["aggregates"]["intervals"]
    by_start = {datetime.fromisoformat(i["start"]).timestamp(): i["energy"] for i in intervals}
    matched = [(v, by_start[t]) for t, v in zip(x, y, strict=True) if v is not None and t in by_start]
    assert len(matched) >= 17_000 and all(math.isclose(v, e, abs_tol=1e-4) for v, e in matched)
    assert {round(v, 2) for v, _ in matched} <= {round(_year_energy(i), 2) for i in range(48)}
    expect(page.locator("#consumption-total")).to_contain_text("Итого за год")
    expect(page.locator("#consumption-details")).to_be_hidden()
    # The cursor moves over the 17,520 points: the legend follows it.
    box = chart.locator(".u-over").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    expect(chart.locator(".u-legend .u-series").nth(1).locator(".u-value")).to_contain_text("kWh")
    response = page.request.get(f"/chart/devices/{YEAR}/consumption?interval=year")
    size = len(response.body())
    assert response.ok and size < 200_000, size  # columns: ~6 bytes a half-hour
    shot(page, "device-year")
    print(f"\nyear chart: {points} points drawn in {draw_ms:.0f} ms (uPlot, from data to the first draw); "
          f"{click_to_chart_s:.2f} s from the click to the chart (query, {size / 1024:.0f} KiB JSON, draw)")
    assert "interval=year" in page.url
    page.reload()  # the year is a link others can open too
    expect(chart).to_have_attribute("data-interval", "year")
    expect(chart).to_have_attribute("data-drawn", "1", timeout=CHART_WAIT_MS)
    assert int(chart.get_attribute("data-points") or 0) == points


def test_another_organisations_forecast_and_year_are_not_found(page: Page, browser: Browser, base: str,
                                                               year_meter: dict) -> None:
    # A second customer of its own organisation sees neither meter's page, chart or year.
    other = "chuzhoy@zavod.example"
    signed_up(browser, base, year_meter["settings"].pg_dsn, 9422, other, "ЭС-2026/95")
    login(page, other, PASSWORD)
    for device in (METER, YEAR):
        assert page.goto(f"/devices/{device}").status == 404  # type: ignore[union-attr]
        for interval in ("30m", "year"):
            assert page.request.get(f"/chart/devices/{device}/consumption?interval={interval}").status == 404
    page.goto("/recommendations")
    expect(page.locator(f"[data-device={METER}]")).to_have_count(0)
    expect(page.locator("#rec-none")).to_be_visible()
