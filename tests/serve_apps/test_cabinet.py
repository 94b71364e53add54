"""The web cabinet in a real browser (Playwright driving Debian's chromium, headless) against the running
pipeline (simulated meters polled every second, the monitoring and users apps on Serve, PostgreSQL):
sign-up with its field errors, login and logout, the dashboard, the device list, a device page whose
consumption chart switches intervals, and another organisation's device. Screenshots of every page are
saved under var/screenshots/ (git-ignored) for people to look at."""
from __future__ import annotations

import asyncio
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from storage.postgres.readings import ReadingsWriter
from tests.conftest import wait_for
from tests.fakes import valid_inn
from tests.serve_apps.cabinet_browser import PASSWORD, fits_a_phone, login, new_context, shot, signed_up, signup, sql
from tests.storage.archive_rows import row

HISTORY = "cab-history-1"  # a meter with three days of archive (written here), owned by the customer
EMAIL = "energo@zavod.example"
KWH_PER_MIN = 0.1  # its steady consumption: 6 kWh an hour, 144 kWh a day
ENERGY = "1-0:1.8.0"
THOUSAND = re.compile(r"1[\u00a0\u202f ]000")  # 1,000 as Russian writes it: digits grouped by a (no-break) space


def _login(page: Page, email: str = EMAIL, password: str = PASSWORD) -> None:
    login(page, email, password)


def _write_history(dsn: str, device_id: str, organisation_id: uuid.UUID) -> None:
    """A meter nobody polls (a disabled connection) with three days of steady active-energy readings every
    5 minutes up to now, owned by the organisation."""
    sql(dsn, "INSERT INTO devices.connections (id, protocol, host, port, poll_interval_s, timeout_s, enabled)"
             " VALUES ($1, 'modbus_tcp', '192.0.2.1', 502, 300, 1, false) ON CONFLICT DO NOTHING", f"c-{device_id}")
    sql(dsn, "INSERT INTO devices.devices (id, name, protocol, profile, connection_id, unit_id, timezone,"
             " organisation_id) VALUES ($1, 'Ввод 1, цех 2', 'modbus_tcp', 'sdm630', $2, 1, 'Europe/Moscow', $3)"
             " ON CONFLICT (id) DO NOTHING", device_id, f"c-{device_id}", organisation_id)
    end = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    start = end - timedelta(days=3, minutes=10)
    points, t = [], start
    while t <= end:
        points.append(row(device_id, ENERGY, t, 1000.0 + (t - start) / timedelta(minutes=1) * KWH_PER_MIN))
        t += timedelta(minutes=5)

    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await ReadingsWriter().write(conn, points)
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


@pytest.fixture(scope="module")
def customer(browser: Browser, base: str, runtime: dict) -> dict:
    """A customer organisation signed up through the cabinet's form, owning the history meter and one
    simulated meter; another simulated meter belongs to another organisation."""
    dsn = runtime["settings"].pg_dsn
    org = signed_up(browser, base, dsn, 9301, EMAIL, "ЭС-2026/17")
    manifest = runtime["manifest"]
    live, foreign = manifest[0]["device_id"], manifest[1]["device_id"]
    sql(dsn, "UPDATE devices.devices SET organisation_id = $1 WHERE id = $2", org, live)
    sql(dsn, "UPDATE devices.devices SET organisation_id = $1 WHERE id = $2", uuid.uuid4(), foreign)
    _write_history(dsn, HISTORY, org)
    wait_for(lambda: sql(dsn, "SELECT 1 FROM devices.device_state WHERE device_id = $1 AND status = 'online'", live),
             90, f"{live} online")
    return {"organisation_id": org, "live": live, "foreign": foreign}


def test_signup_with_a_bad_inn_shows_the_error_next_to_the_field(page: Page, runtime: dict) -> None:
    signup(page, "7707083894", "someone@example.ru", PASSWORD, "ЭС-1")  # a wrong check digit
    inn = page.locator("#f-inn")
    expect(inn).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#e-inn")).to_contain_text("Неверный ИНН")
    expect(page.locator("#e-inn")).to_contain_text("неверная контрольная цифра")  # the users API's reason, in Russian
    # The error is the field's description (read with it by screen readers); the other fields are fine and kept.
    assert "e-inn" in (inn.get_attribute("aria-describedby") or "")
    for other in ("email", "password", "contract_number"):
        expect(page.locator(f"#e-{other}")).to_be_empty()
    expect(page.get_by_label("Электронная почта (логин)")).to_have_value("someone@example.ru")
    expect(page.locator("#form-error")).to_be_visible()
    shot(page, "signup-error")
    assert not sql(runtime["settings"].pg_dsn, "SELECT id FROM auth.users WHERE email = 'someone@example.ru'")


def test_signup_login_logout_and_the_session_cookies(page: Page, context: BrowserContext, customer: dict,
                                                     base: str) -> None:
    _login(page, EMAIL, "a wrong password!")
    expect(page.locator("#form-error")).to_contain_text("Неверная электронная почта или пароль")
    expect(page.get_by_label("Электронная почта")).to_have_value(EMAIL)
    shot(page, "login-failed")
    # Keyboard only: the skip link comes first, every field is reached with Tab, Enter sends the form.
    page.goto("/login")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    for _ in range(10):
        if page.evaluate("document.activeElement.id") == "f-email":
            break
        page.keyboard.press("Tab")
    page.keyboard.type(EMAIL)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "f-password"
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{base}/")
    expect(page.locator(".who")).to_contain_text(EMAIL)
    cookies = {c["name"]: c for c in context.cookies()}
    for name in ("mr_at", "mr_rt"):  # neither token is readable by a script, neither goes to another site
        assert cookies[name]["httpOnly"] and cookies[name]["sameSite"] == "Strict", cookies[name]
    assert page.evaluate("document.cookie").find("mr_rt") < 0
    # The access token gone (expired): the next page renews it with the refresh token, which is rotated.
    context.clear_cookies(name="mr_at")
    page.goto("/devices")
    expect(page.locator("h1")).to_have_text("Приборы учёта")
    renewed = {c["name"]: c["value"] for c in context.cookies()}
    assert renewed["mr_at"] and renewed["mr_rt"] != cookies["mr_rt"]["value"]
    page.get_by_role("button", name="Выйти").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto("/devices")  # the session is gone: back to the login form, which returns here afterwards
    expect(page).to_have_url(re.compile(r"/login\?next=/devices$"))
    # The refresh token of that login was revoked by the logout: it no longer renews a session.
    assert "mr_rt" not in {c["name"] for c in context.cookies()}


def test_a_form_posted_from_another_site_is_refused(base: str, customer: dict) -> None:
    data = urllib.parse.urlencode({"email": EMAIL, "password": PASSWORD, "next": "/"}).encode()
    for origin in ("http://evil.example", None):
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if origin:
            headers["Origin"] = origin
        req = urllib.request.Request(f"{base}/login", data=data, method="POST", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == 403 and "set-cookie" not in {k.lower() for k in err.value.headers}
    huge = urllib.parse.urlencode({"email": EMAIL, "password": "x" * 20_000}).encode()
    req = urllib.request.Request(f"{base}/login", data=huge, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded", "Origin": base})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 413


def test_dashboard_shows_the_organisations_devices_and_consumption(page: Page, customer: dict) -> None:
    _login(page)
    expect(page.locator("h1")).to_have_text("Сводка")
    expect(page.locator("[data-status-count=online]")).to_have_text(re.compile(r"^[12]$"))
    counts = [int(c) for c in page.locator("[data-status-count]").all_inner_texts()]
    assert sum(counts) == 2, counts  # its two meters; the other organisation's and nobody's are not counted
    today = page.locator("#today").inner_text()
    month = page.locator("#month").inner_text()
    assert re.match(r"^\d[\d\s\u00a0\u202f]*,\d kWh$", today) and float(
        re.sub(r"[^\d,]", "", month).replace(",", ".")) >= float(re.sub(r"[^\d,]", "", today).replace(",", ".")) > 0
    shot(page, "dashboard")
    # On a phone: one column, nothing wider than the screen.
    fits_a_phone(page, "dashboard-phone")
    page.get_by_role("link", name=re.compile("Все приборы")).click()
    expect(page.locator("#devices tbody tr")).to_have_count(2)
    expect(page.locator("#devices")).to_contain_text(customer["live"])
    expect(page.locator("#devices")).not_to_contain_text(customer["foreign"])
    page.get_by_label("Поиск по номеру или названию").fill("цех 2")
    page.get_by_role("button", name="Показать").click()
    expect(page.locator("#devices tbody tr")).to_have_count(1)
    expect(page.locator("#devices")).to_contain_text(HISTORY)
    shot(page, "devices")
    # English, switched on any page; the choice stays.
    page.get_by_role("link", name="Switch to English").click()
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("h1")).to_have_text("Meters")
    page.goto("/")
    expect(page.locator("h1")).to_have_text("Dashboard")


def test_device_page_chart_switches_intervals(page: Page, customer: dict) -> None:
    _login(page)
    page.goto(f"/devices/{HISTORY}")
    chart = page.locator("#consumption-chart")
    expect(chart).to_have_attribute("data-drawn", "1")
    expect(chart.locator("canvas")).to_have_count(1)  # uPlot drew it (served from this origin)
    half_hours = int(chart.get_attribute("data-points") or 0)
    assert 47 <= half_hours <= 50, half_hours  # a day of half-hours
    shot(page, "device")
    page.locator("[data-chart-switch=consumption] a[data-interval='1h']").click()
    expect(chart).to_have_attribute("data-interval", "1h")
    expect(page.locator("[data-chart-switch] a[aria-current=true]")).to_have_attribute("data-interval", "1h")
    hours = int(chart.get_attribute("data-points") or 0)
    assert 71 <= hours <= 74, hours  # three days of hours
    page.get_by_text("Данные графика таблицей").click()
    table = page.locator("#consumption-table")
    expect(table).to_have_attribute("data-interval", "1h")
    expect(table.locator("tbody tr")).to_have_count(hours)
    expect(table).to_contain_text("6")  # 6 kWh an hour, as written
    assert "interval=1h" in page.url  # a reload (or a shared link) shows the same interval
    page.locator("[data-chart-switch=consumption] a[data-interval='1d']").click()
    expect(table).to_have_attribute("data-interval", "1d")
    expect(table).to_contain_text("144")  # a whole local day: 144 kWh
    shot(page, "device-days")
    # Current values with units and flags, the archive chart of another quantity, the health history.
    page.goto(f"/devices/{customer['live']}")
    expect(page.locator("#current tbody tr").first).to_be_visible()
    expect(page.locator("#current")).to_contain_text("kWh")
    expect(page.locator("#health-history")).to_contain_text("В сети")
    page.get_by_label("Величина").select_option(index=0)
    page.get_by_role("button", name="Показать").click()
    expect(page.locator("#archive-chart")).to_have_attribute("data-drawn", "1")
    shot(page, "device-live")


def test_another_organisations_device_is_not_found(page: Page, customer: dict) -> None:
    _login(page)
    response = page.goto(f"/devices/{customer['foreign']}")
    assert response is not None and response.status == 404
    expect(page.locator("#not-found")).to_contain_text("нет к нему доступа")
    shot(page, "not-found")
    for path in ("consumption?interval=1d", f"archive?quantity={ENERGY}&period=1d"):  # nor its chart data
        answer = page.request.get(f"/chart/devices/{customer['foreign']}/{path}")
        assert answer.status == 404, path
    # The same as a device that does not exist at all.
    assert page.goto("/devices/no-such-meter").status == 404  # type: ignore[union-attr]


def test_a_thousand_meters_page_by_page(browser: Browser, base: str, runtime: dict) -> None:
    """An organisation with 1,000 meters: the list counts them, shows a page at a time and pages on."""
    ctx = new_context(browser, base)
    page = ctx.new_page()
    email = "fleet@set.example"
    signup(page, valid_inn(9302), email, PASSWORD, "ЭС-1000")
    expect(page).to_have_url(re.compile(r"/$"))
    dsn = runtime["settings"].pg_dsn
    org = sql(dsn, "SELECT organisation_id FROM auth.users WHERE email = $1", email)[0]["organisation_id"]
    sql(dsn, "INSERT INTO devices.devices (id, name, protocol, profile, organisation_id)"
             " SELECT 'fleet-' || lpad(n::text, 4, '0'), 'Щит ' || n, 'mqtt', 'mqtt', $1"
             " FROM generate_series(1, 1000) n",
        org)
    started = time.monotonic()
    page.goto("/devices")
    first_page_s = time.monotonic() - started
    expect(page.locator("#device-count")).to_contain_text(THOUSAND)
    expect(page.locator("#devices tbody tr")).to_have_count(50)
    expect(page.locator("#devices tbody tr").first).to_contain_text("fleet-0001")
    page.locator("#next-page").click()
    expect(page.locator("#devices tbody tr").first).to_contain_text("fleet-0051")
    page.get_by_label("На странице").select_option("100")
    page.get_by_label("Поиск по номеру или названию").fill("Щит 99")
    page.get_by_role("button", name="Показать").click()
    expect(page.locator("#devices tbody tr")).to_have_count(11)  # 99 and 990..999
    page.goto("/")
    expect(page.locator("[data-status-count=unknown]")).to_have_text(THOUSAND)
    shot(page, "dashboard-1000")
    ctx.close()
    assert first_page_s < 10, first_page_s  # on a loaded 2-core machine; about a second alone
