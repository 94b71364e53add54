"""The cabinet's notifications inbox in a real browser (Playwright on Debian's chromium) against the running
pipeline: a customer signed up through the form owns one simulated meter; the meter goes offline for real
(the simulator's fault injection → the device processor's event → the notifier, by the platform's default
rules, which notify every role including customers) and the notification shows up in the cabinet: the
unread badge in the navigation, the inbox naming the meter in the user's time zone, marking it read
(keyboard only), mark-all-read, the preferences form, and neither another organisation's user nor a form
from another site can mark it read; thirty notifications page by page. Screenshots under var/screenshots/
(git-ignored). The module's users turn e-mail off before their meters' events: no fake Unisender runs here."""
from __future__ import annotations

import asyncio
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Browser, Page, expect

from meterray.domain import DeviceEvent, DeviceStatus
from meterray.identity import Role
from meterray.settings import Settings
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer
from tests.auth_headers import bearer
from tests.conftest import wait_for
from tests.pipeline.helpers import http
from tests.serve_apps.cabinet_browser import PASSWORD, fits_a_phone, login, new_context, shot, signed_up, sql

EMAIL = "dispetcher@teplica.example"
OTHER_EMAIL = "energetik@sosedi.example"
BADGE = "#unread-badge"


@pytest.fixture(scope="module")
def customer(browser: Browser, base: str, runtime: dict) -> dict:
    """A customer organisation signed up through the cabinet's form, owning one simulated meter."""
    dsn = runtime["settings"].pg_dsn
    org = signed_up(browser, base, dsn, 9401, EMAIL, "ЭС-2026/411")
    # manifest[8] (the third port's third meter, an SDM630): not one another test injects faults into
    # (test_faults: manifest[1] and the last port; test_health: the first three spare meters; test_consumption:
    # manifest[2]) nor one the cabinet's other tests give an organisation (manifest[0], manifest[1]).
    meter = runtime["manifest"][8]["device_id"]
    sql(dsn, "UPDATE devices.devices SET organisation_id = $1 WHERE id = $2", org, meter)
    wait_for(lambda: sql(dsn, "SELECT 1 FROM devices.device_state WHERE device_id = $1 AND status = 'online'", meter),
             90, f"{meter} online")
    user_id = sql(dsn, "SELECT id FROM auth.users WHERE email = $1", EMAIL)[0]["id"]
    return {"organisation_id": org, "user_id": user_id, "meter": meter}


def _save_preferences(page: Page, *, in_app: bool, email: bool, degraded: bool) -> None:
    """Through the form on the inbox page, by its labels."""
    page.goto("/notifications")
    page.get_by_label("В личном кабинете").set_checked(in_app)
    page.get_by_label("По электронной почте").set_checked(email)
    page.get_by_label("Прибор работает с ошибками").set_checked(degraded)
    page.get_by_role("button", name="Сохранить настройки").click()
    expect(page.locator("#done")).to_have_text("Настройки уведомлений сохранены.")


def _badge_after_reloads(page: Page, count: int, timeout_s: float) -> None:
    """The badge is server-rendered: reload until it shows `count` (bounded)."""
    def shown() -> bool:
        page.reload()
        badge = page.locator(f"{BADGE} [aria-hidden=true]")
        return badge.count() == 1 and badge.inner_text() == str(count)

    wait_for(shown, timeout_s, f"the unread badge to show {count}", every_s=1.0)


def _set_fault(control: str, meter: str, fault: str) -> None:
    assert http("POST", f"{control}/faults", {"device_id": meter, "fault": fault})[0] == 200


def test_the_preferences_form_saves_the_channels_and_kinds(page: Page, base: str, customer: dict,
                                                          runtime: dict) -> None:
    login(page, EMAIL, PASSWORD)
    _save_preferences(page, in_app=True, email=False, degraded=False)
    page.reload()  # what the page shows after a reload is what was stored
    expect(page.get_by_label("В личном кабинете")).to_be_checked()
    expect(page.get_by_label("По электронной почте")).not_to_be_checked()
    expect(page.get_by_label("Прибор работает с ошибками")).not_to_be_checked()
    expect(page.get_by_label("Прибор не в сети")).to_be_checked()
    # The notifications API (which the notifier's recipients query reads too) says the same.
    settings = runtime["settings"]
    headers = bearer(settings, Role.CUSTOMER, customer["organisation_id"], customer["user_id"])
    status, prefs = http("GET", f"{runtime['api']}/api/v1/notifications/preferences", headers=headers)
    assert (status, prefs) == (200, {"in_app": True, "email": False, "muted_kinds": ["device_degraded"]})
    shot(page, "notifications-preferences")
    # Refused and nothing stored: a kind the API does not know (422, shown on the page), a form from another
    # site or from nowhere (403), a form larger than any of the cabinet's (413).
    url = f"{base}/notifications/preferences"
    forged = {"in_app": "on", "email": "on", "kinds": "device_degraded"}
    answer = page.request.post(url, form={**forged, "kinds": "everything"}, headers={"Origin": base})
    assert answer.status == 422 and "неизвестный вид событий" in answer.text()
    for origin in ("http://evil.example", None):
        answer = page.request.post(url, form=forged, headers={"Origin": origin} if origin else {}, max_redirects=0)
        assert answer.status == 403, (origin, answer.status)
    answer = page.request.post(url, form={**forged, "email": "x" * 20_000}, headers={"Origin": base},
                               max_redirects=0)
    assert answer.status == 413
    assert http("GET", f"{runtime['api']}/api/v1/notifications/preferences", headers=headers)[1] == prefs
    _save_preferences(page, in_app=True, email=True, degraded=True)
    page.reload()
    expect(page.get_by_label("По электронной почте")).to_be_checked()
    expect(page.get_by_label("Прибор работает с ошибками")).to_be_checked()


def test_a_meter_going_offline_reaches_the_inbox_and_is_marked_read(
        page: Page, browser: Browser, base: str, customer: dict, runtime: dict, sim_control: str) -> None:
    dsn, meter, user_id = runtime["settings"].pg_dsn, customer["meter"], customer["user_id"]
    login(page, EMAIL, PASSWORD)
    # Degraded muted (a meter may pass through it on its way offline), e-mail off (no fake Unisender runs for
    # this module): the meter's loss is exactly one in-app notification.
    _save_preferences(page, in_app=True, email=False, degraded=False)
    expect(page.locator(BADGE)).to_have_count(0)
    expect(page.locator("#no-notifications")).to_be_visible()

    _set_fault(sim_control, meter, "timeout")
    try:
        _badge_after_reloads(page, 1, 120)
        # Read by screen readers as part of the link: "Уведомления, 1 непрочитанное".
        expect(page.get_by_role("link", name=re.compile(r"^Уведомления\W*1 непрочитанное$"))).to_be_visible()
        page.goto("/devices")  # on every page
        expect(page.locator(BADGE)).to_contain_text("1")
        page.goto("/notifications")
        items = page.locator("#notifications li")
        expect(items).to_have_count(1)
        item = items.first
        expect(item).to_have_attribute("data-kind", "device_offline")
        expect(item).to_have_attribute("data-read", "false")
        expect(item).to_contain_text("Прибор не в сети")
        expect(item).to_contain_text("Новое")
        expect(item.get_by_role("link", name=meter)).to_have_attribute("href", f"/devices/{meter}")
        notification_id = int(item.get_attribute("data-id") or 0)
        [row] = sql(dsn, "SELECT kind, event_ts, user_id FROM notify.notifications WHERE id = $1", notification_id)
        assert (row["kind"], row["user_id"]) == ("device_offline", user_id)
        moscow = row["event_ts"].astimezone(ZoneInfo("Europe/Moscow"))  # the browser's zone, told by cabinet.js
        expect(item.locator("time")).to_contain_text(moscow.strftime("%H:%M:%S"))
        expect(item.locator("time")).to_contain_text(str(moscow.year))
        # The notifier's own record: it acted on the meter's event for this organisation, wrote this user one
        # in-app notification, and no e-mail (the user turned e-mail off).
        [event] = sql(dsn, "SELECT organisation_id, outcome FROM notify.events WHERE device_id = $1"
                           " AND kind = 'device_offline'", meter)
        assert (event["organisation_id"], event["outcome"]) == (customer["organisation_id"], "notified")
        mine = sql(dsn, "SELECT kind FROM notify.notifications WHERE user_id = $1", user_id)
        assert [r["kind"] for r in mine] == ["device_offline"], mine
        assert not sql(dsn, "SELECT 1 FROM notify.email_outbox WHERE user_id = $1", user_id)
        shot(page, "notifications")

        # Another organisation's user cannot mark it read (the same 404 as an id that does not exist), and a
        # form sent from another site is refused even with this user's cookies.
        other_org = signed_up(browser, base, dsn, 9402, OTHER_EMAIL, "ЭС-2026/412")
        assert other_org != customer["organisation_id"]
        other = new_context(browser, base)
        try:
            other_page = other.new_page()
            login(other_page, OTHER_EMAIL, PASSWORD)
            expect(other_page.locator(".who")).to_contain_text(OTHER_EMAIL)
            for target in (notification_id, 2**62, "abc"):
                answer = other_page.request.post(f"/notifications/{target}/read", headers={"Origin": base},
                                                 max_redirects=0)
                assert answer.status == 404, (target, answer.status)
            other_page.goto("/notifications")
            expect(other_page.locator(BADGE)).to_have_count(0)
            expect(other_page.locator("#no-notifications")).to_be_visible()
        finally:
            other.close()
        for origin in ("http://evil.example", None):
            answer = page.request.post(f"/notifications/{notification_id}/read", max_redirects=0,
                                       headers={"Origin": origin} if origin else {})
            assert answer.status == 403, (origin, answer.status)
            answer = page.request.post("/notifications/read-all", max_redirects=0,
                                       headers={"Origin": origin} if origin else {})
            assert answer.status == 403, (origin, answer.status)
        assert sql(dsn, "SELECT read_at FROM notify.notifications WHERE id = $1", notification_id)[0]["read_at"] is None

        # Marked read with the keyboard: Tab to the item's button, Enter.
        page.goto("/notifications")
        for _ in range(40):
            if page.evaluate("document.activeElement.tagName") == "BUTTON" and "Отметить прочитанным" in page.evaluate(
                    "document.activeElement.textContent"):
                break
            page.keyboard.press("Tab")
        else:
            pytest.fail("the mark-read button is not reachable with Tab")
        page.keyboard.press("Enter")
        expect(page.locator("#done")).to_have_text("Уведомление отмечено прочитанным.")
        expect(page.locator(BADGE)).to_have_count(0)
        item = page.locator(f"#n-{notification_id}")
        expect(item).to_have_attribute("data-read", "true")  # still listed, as read
        expect(item).to_contain_text("Прочитано")
        expect(item.get_by_role("button")).to_have_count(0)
        expect(page.locator("#unread-total")).to_have_text("Непрочитанных: 0")
        shot(page, "notifications-read")
    finally:
        _set_fault(sim_control, meter, "none")

    # Back online: one more notification (unread, listed first); "mark all read" clears the badge.
    _badge_after_reloads(page, 1, 120)
    page.goto("/notifications")
    items = page.locator("#notifications li")
    expect(items).to_have_count(2)
    expect(items.nth(0)).to_have_attribute("data-kind", "device_online")
    expect(items.nth(0)).to_have_attribute("data-read", "false")
    expect(items.nth(1)).to_have_attribute("data-id", str(notification_id))
    page.get_by_role("button", name="Отметить все прочитанными").click()
    expect(page.locator("#done")).to_have_text("Все уведомления отмечены прочитанными.")
    expect(page.locator(BADGE)).to_have_count(0)
    expect(page.locator("#notifications li[data-read=true]")).to_have_count(2)
    expect(page.get_by_role("button", name="Отметить все прочитанными")).to_have_count(0)
    assert not sql(dsn, "SELECT 1 FROM notify.notifications WHERE user_id = $1 AND read_at IS NULL", user_id)

    # On a phone: nothing wider than the screen.
    fits_a_phone(page, "notifications-phone")
    # English.
    page.get_by_role("link", name="Switch to English").click()
    expect(page.locator("h1")).to_have_text("Notifications")
    expect(page.locator(f"#n-{notification_id}")).to_contain_text("Meter offline")
    expect(page.get_by_label("By e-mail")).not_to_be_checked()
    page.get_by_role("link", name="Переключить на русский").click()
    expect(page.locator("html")).to_have_attribute("lang", "ru")
    # Leave the meter as it was found (other modules expect the session's meters online).
    wait_for(lambda: sql(dsn, "SELECT 1 FROM devices.device_state WHERE device_id = $1 AND status = 'online'", meter),
             90, f"{meter} back online")


def _produce(settings: Settings, events: list[DeviceEvent]) -> None:
    """Device events on `device-events` through Kafka, as the device processor sends them."""
    async def run() -> None:
        topic = settings.topic(topics.DEVICE_EVENTS)
        async with AsyncProducer(settings.kafka_bootstrap) as producer:
            await producer.send_many([(topic, topics.partition_for(e.device_id, settings.kafka_partitions),
                                       e.device_id.encode(), codec.encode_event(e)) for e in events])

    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API keeps an event loop in this thread
        pool.submit(asyncio.run, run()).result()


def test_many_notifications_page_by_page(page: Page, browser: Browser, base: str, runtime: dict) -> None:
    """Thirty meters of another organisation go offline (their events through Kafka to the notifier, one
    notification each): the inbox shows 25 a page, newest first, and the next page the rest, none twice."""
    settings = runtime["settings"]
    dsn = settings.pg_dsn
    email = "fleet@notify-pages.example"
    org = signed_up(browser, base, dsn, 9403, email, "ЭС-2026/413")
    user_id = sql(dsn, "SELECT id FROM auth.users WHERE email = $1", email)[0]["id"]
    prefix = f"cabn-{uuid.uuid4().hex[:6]}-"
    sql(dsn, "INSERT INTO devices.devices (id, name, protocol, profile, organisation_id)"
             " SELECT $1 || lpad(n::text, 2, '0'), 'Щит ' || n, 'mqtt', 'mqtt', $2 FROM generate_series(1, 30) n",
        prefix, org)
    login(page, email, PASSWORD)
    # E-mail off: no fake Unisender runs for this module (thirty e-mails would wait in the outbox, retried).
    _save_preferences(page, in_app=True, email=False, degraded=True)
    now = int(time.time() * 1000)
    _produce(settings, [DeviceEvent(f"{prefix}{n:02d}", now + n, "status", DeviceStatus.OFFLINE, DeviceStatus.ONLINE,
                                    "timeout", ("timeout",)) for n in range(1, 31)])
    wait_for(lambda: len(sql(dsn, "SELECT 1 FROM notify.notifications WHERE user_id = $1", user_id)) >= 30, 90,
             "thirty notifications")
    ids = [r["id"] for r in sql(dsn, "SELECT id FROM notify.notifications WHERE user_id = $1 ORDER BY id DESC",
                                user_id)]
    page.goto("/notifications")
    shown = page.locator("#notifications li")
    expect(shown).to_have_count(25)
    first = [int(i) for i in shown.evaluate_all("els => els.map(e => e.dataset.id)")]
    assert first == ids[:25]  # all unread: newest first
    expect(page.locator("#unread-total")).to_have_text(f"Непрочитанных: {len(ids)}")
    page.locator("#next-page").click()
    expect(shown).to_have_count(len(ids) - 25)
    rest = [int(i) for i in shown.evaluate_all("els => els.map(e => e.dataset.id)")]
    assert rest == ids[25:]
    expect(page.locator("#next-page")).to_have_count(0)
    shot(page, "notifications-page-2")
    # Marked read on the second page: back on the same page, the notification now read.
    page.locator(f"#n-{rest[0]}").get_by_role("button").click()
    expect(page.locator("#done")).to_be_visible()
    assert "cursor=" in page.url
    expect(page.locator(f"#n-{rest[0]}")).to_have_attribute("data-read", "true")
    expect(page.locator(BADGE)).to_contain_text(str(len(ids) - 1))
    # A cursor edited by hand: the first page, not an error.
    response = page.goto(f"/notifications?cursor={uuid.uuid4()}")
    assert response is not None and response.status == 200
    expect(shown).to_have_count(25)
    page.get_by_role("link", name="Следующая страница").click()
    expect(shown.last).to_have_attribute("data-id", str(rest[0]))  # read ones come after the unread
