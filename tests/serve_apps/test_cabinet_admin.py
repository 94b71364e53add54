"""The cabinet's admin pages in a real browser (Playwright driving Debian's chromium) against the running pipeline:
the runtime's actors (platform staff), an organisation admin adding a Modbus meter with dry runs (real values
from a simulated meter, a host that does not resolve, a field the API refuses) whose readings then reach
PostgreSQL, users created, promoted and disabled, partners' dry runs of a pasted payload, and who may see what:
a customer gets 403 and no admin link, another organisation's objects are 404. Screenshots: var/screenshots/admin-*.

Who reaches which section is meterray.access: sign-up makes a customer, so the organisation's admin here is that
customer promoted by platform staff through the users API (as an operator of the platform would)."""
from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
import ray
from playwright.sync_api import Browser, Page, expect

from meterray.identity import Role
from tests.auth_headers import bearer
from tests.conftest import wait_for
from tests.pipeline.helpers import http
from tests.serve_apps.cabinet_browser import PASSWORD, fits_a_phone, login, new_context, shot, signed_up, sql

ADMIN = "admin@cab-admin.example"  # the organisation's admin (signed up, then promoted)
OTHER = "admin@cab-admin-other.example"  # another organisation's
STAFF = "staff@cab-admin.example"  # platform staff (admin of no organisation)
CUSTOMER = "viewer@cab-admin.example"  # a customer of the admin's organisation
WORKER = "worker@cab-admin.example"  # created customer, made operator, disabled
VOLTAGE_L1 = "1-0:32.7.0"
NBSP = re.compile(r"[\u00a0\u202f ]")


def _api(runtime: dict, method: str, path: str, body: Any = None, **who: Any) -> tuple[int, Any]:
    return http(method, f"{runtime['api']}{path}", body, bearer(runtime["settings"], **who))


def _user_id(dsn: str, email: str) -> uuid.UUID:
    found: uuid.UUID = sql(dsn, "SELECT id FROM auth.users WHERE email = $1", email)[0]["id"]
    return found


def _promote(runtime: dict, email: str) -> None:
    """Platform staff make the signed-up customer its organisation's admin (the users API's PATCH)."""
    uid = _user_id(runtime["settings"].pg_dsn, email)
    status, body = _api(runtime, "PATCH", f"/api/v1/users/{uid}", {"role": "admin"})
    assert status == 200 and body["role"] == "admin", body


@pytest.fixture(scope="module")
def orgs(browser: Browser, base: str, runtime: dict) -> dict[str, Any]:
    """Two organisations signed up through the form, their first users made admins; platform staff; the other
    organisation's connection (a meter nobody answers at, polled rarely)."""
    dsn = runtime["settings"].pg_dsn
    mine = signed_up(browser, base, dsn, 9441, ADMIN, "ЭС-2026/441")
    other = signed_up(browser, base, dsn, 9442, OTHER, "ЭС-2026/442")
    _promote(runtime, ADMIN)
    _promote(runtime, OTHER)
    status, body = _api(runtime, "POST", "/api/v1/users", {"email": STAFF, "password": PASSWORD, "role": "admin",
                                                           "organisation_id": None})
    assert status == 201, body
    doc = {"kind": "modbus_tcp", "connection_id": "cab-admin-other", "host": "192.0.2.1", "port": 502,
           "poll_interval_s": 300, "timeout_s": 1, "devices": [{"device_id": "cab-admin-other-1", "unit_id": 1,
                                                                "profile": "sdm630"}]}
    status, body = _api(runtime, "POST", "/api/v1/connections", doc, role=Role.ADMIN, organisation_id=other)
    assert status == 201, body
    return {"mine": mine, "other": other, "other_user": _user_id(dsn, OTHER), "other_connection": "cab-admin-other"}


def _admin_links(page: Page) -> list[str]:
    return page.locator("nav.nav a[href='/admin']").all_inner_texts()


def test_the_runtime_page_lists_every_child_of_the_supervisor(page: Page, orgs: dict, runtime: dict) -> None:
    login(page, STAFF)
    page.goto("/admin")
    expect(page.locator("#admin-sections a")).to_have_text(["Среда выполнения", "Подключения", "Партнёры",
                                                            "Пользователи и роли"])
    page.get_by_role("link", name="Среда выполнения").first.click()
    expect(page).to_have_url(re.compile(r"/admin/runtime$"))
    children = ray.get(runtime["supervisor"].status.remote())["children"]
    rows = page.locator("#actors tbody tr")
    expect(rows).to_have_count(len(children))
    shown = {r.get_attribute("data-actor") for r in rows.all()}
    assert shown == set(children)
    roles = {c["role"] for c in children.values()}
    assert {"modbus-shard", "device-processor", "pg-writer"} <= roles, roles
    def every_actor_answers() -> bool:  # a ping can miss its deadline on a loaded machine: the page is reloaded
        page.reload()
        return page.locator("#actors [data-state]:not([data-state=running])").count() == 0

    wait_for(every_actor_answers, 90, "every actor answering its ping on the runtime page")
    for name, child in children.items():  # each with its state, and the shards with their connections
        row = page.locator(f"#actors tr[data-actor='{name}']")
        expect(row.locator("[data-state]")).to_have_attribute("data-state", "running")
        expect(row.locator("[data-state]")).to_have_text("Работает")
        if child["role"] == "modbus-shard" and child["connection_ids"]:
            expect(row).to_contain_text(child["connection_ids"][0])
    expect(page.locator("#supervisor")).to_contain_text(str(ray.get(runtime["supervisor"].status.remote())["pid"]))
    expect(page.locator("#device-states")).to_contain_text("В сети")
    shot(page, "admin-runtime")
    fits_a_phone(page, "admin-runtime-phone")  # the table scrolls inside its box, not the page


def test_an_organisation_admin_adds_a_modbus_meter_after_a_dry_run(page: Page, orgs: dict, runtime: dict,
                                                                   base: str) -> None:
    dsn = runtime["settings"].pg_dsn
    meter = runtime["manifest"][5]
    device = "cab-admin-meter-1"
    login(page, ADMIN)
    expect(page.locator("nav.nav a[href='/admin']")).to_have_count(1)
    page.goto("/admin")
    # An organisation's admin manages connections and users; the runtime and partners are platform staff's.
    expect(page.locator("#admin-sections a")).to_have_text(["Подключения", "Пользователи и роли"])
    assert page.goto("/admin/runtime").status == 403  # type: ignore[union-attr]
    expect(page.locator("#forbidden")).to_contain_text("Доступ запрещён")
    expect(page.locator("#forbidden-reason")).to_contain_text("runtime:read")
    page.goto("/admin/connections")
    expect(page.locator("#connections tr[data-connection='cab-admin-other']")).to_have_count(0)  # not its own

    def fill(host: str, unit: str) -> None:
        page.get_by_label("Идентификатор подключения").fill("cab-admin-conn-1")
        page.get_by_label("Хост (IP-адрес или имя)").fill(host)
        page.get_by_label("Порт").fill(str(meter["port"]))
        page.get_by_label("Период опроса, с").fill("1")
        page.get_by_label("Тайм-аут ответа, с").fill("0.5")
        page.get_by_label("Идентификатор прибора").fill(device)
        page.get_by_label("Название прибора").fill("Ввод 2, склад")
        page.get_by_label("Адрес Modbus (unit id)").fill(unit)
        page.get_by_label("Модель счётчика").select_option(meter["profile"])

    # A field the API refuses: its message next to that field, the others kept as typed.
    fill(meter["host"], "300")
    page.get_by_role("button", name="Сохранить").click()
    expect(page.locator("#f-unit_id")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#e-unit_id")).to_contain_text("less than or equal to 255")
    expect(page.locator("#e-host")).to_be_empty()
    expect(page.get_by_label("Идентификатор прибора")).to_have_value(device)
    shot(page, "admin-connection-invalid")
    assert not sql(dsn, "SELECT 1 FROM devices.devices WHERE id = $1", device)

    # A host that does not resolve: the probe's typed failure, what to check, its hint.
    fill("no-such-meter.invalid", str(meter["unit_id"]))
    page.get_by_role("button", name="Пробный опрос").click()
    failure = page.locator(f"#dry-run [data-device='{device}'] .failure")
    expect(failure).to_have_attribute("data-kind", "host_unresolved")
    expect(failure).to_contain_text("Хост не найден")
    expect(failure.locator(".suspect")).to_have_text("хост и порт")
    expect(failure).to_contain_text("check the host name")
    shot(page, "admin-dry-run-failure")

    # The simulated meter itself: read once, its real values (a 230 V network), nothing stored yet.
    fill(meter["host"], str(meter["unit_id"]))
    page.get_by_role("button", name="Пробный опрос").click()
    probe = page.locator(f"#dry-run [data-device='{device}']")
    expect(probe).to_have_attribute("data-ok", "true")
    volts = probe.locator(f"tr[data-quantity='{VOLTAGE_L1}'] .value").inner_text()
    assert 200 < float(NBSP.sub("", volts).replace(",", ".")) < 260, volts
    expect(probe.locator(f"tr[data-quantity='{VOLTAGE_L1}'] .unit")).to_have_text("V")
    shot(page, "admin-dry-run")
    fits_a_phone(page, "admin-dry-run-phone")
    assert not sql(dsn, "SELECT 1 FROM devices.devices WHERE id = $1", device)

    page.get_by_role("button", name="Сохранить").click()
    expect(page).to_have_url(re.compile(r"/admin/connections/cab-admin-conn-1\?saved=1(#.*)?$"))
    expect(page.locator("#saved")).to_be_visible()
    expect(page.locator("#connection-devices")).to_contain_text(device)
    owner = sql(dsn, "SELECT organisation_id FROM devices.devices WHERE id = $1", device)
    assert owner and owner[0]["organisation_id"] == orgs["mine"]
    wait_for(lambda: sql(dsn, "SELECT 1 FROM monitoring.readings WHERE device_id = $1 AND quantity = $2 LIMIT 1",
                         device, VOLTAGE_L1), 90, f"{device}'s first readings in PostgreSQL")
    page.goto(f"/devices?q={device}")
    expect(page.locator("#devices")).to_contain_text(device)
    page.goto("/admin/connections")
    expect(page.locator("#connections tr[data-connection='cab-admin-conn-1']")).to_contain_text(device)
    shot(page, "admin-connections")

    # The stored connection's own dry run, then deleting it: polling stops, the readings stay.
    page.goto("/admin/connections/cab-admin-conn-1")
    page.get_by_role("button", name="Пробный опрос").click()
    expect(page.locator(f"#dry-run [data-device='{device}']")).to_have_attribute("data-ok", "true")
    page.get_by_role("button", name="Удалить подключение").click()
    expect(page).to_have_url(f"{base}/admin/connections?deleted=cab-admin-conn-1")
    expect(page.locator("#deleted")).to_be_visible()
    assert not sql(dsn, "SELECT 1 FROM devices.connections WHERE id = 'cab-admin-conn-1'")
    assert sql(dsn, "SELECT 1 FROM monitoring.readings WHERE device_id = $1 LIMIT 1", device)


def test_an_admin_creates_promotes_and_disables_a_user(page: Page, browser: Browser, orgs: dict, runtime: dict,
                                                       base: str) -> None:
    dsn = runtime["settings"].pg_dsn
    login(page, ADMIN)
    page.goto("/admin/users")
    expect(page.locator(f"#users tr[data-user='{ADMIN}']")).to_be_visible()
    expect(page.locator(f"#users tr[data-user='{OTHER}']")).to_have_count(0)  # another organisation's
    # The API's password rules, next to the field.
    page.get_by_label("Электронная почта (логин)").fill(WORKER)
    page.get_by_label("Временный пароль").fill("short")
    page.get_by_label("Роль", exact=True).select_option("customer")
    page.get_by_role("button", name="Создать").click()
    expect(page.locator("#f-password")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#e-password")).to_contain_text("не короче 10 символов")
    expect(page.get_by_label("Электронная почта (логин)")).to_have_value(WORKER)
    shot(page, "admin-user-invalid")
    assert not sql(dsn, "SELECT 1 FROM auth.users WHERE email = $1", WORKER)

    for email in (WORKER, CUSTOMER):
        page.goto("/admin/users")
        page.get_by_label("Электронная почта (логин)").fill(email)
        page.get_by_label("Временный пароль").fill(PASSWORD)
        page.get_by_label("Роль", exact=True).select_option("customer")
        page.get_by_role("button", name="Создать").click()
        expect(page.locator("#user-role")).to_have_attribute("data-role", "customer")
    row = sql(dsn, "SELECT role, organisation_id FROM auth.users WHERE email = $1", WORKER)[0]
    assert row["role"] == "customer" and row["organisation_id"] == orgs["mine"]

    page.goto(f"/admin/users/{_user_id(dsn, WORKER)}")
    page.get_by_label("Новая роль").select_option("operator")
    page.get_by_role("button", name="Сменить роль").click()
    expect(page.locator("#done")).to_have_text("Роль изменена.")
    expect(page.locator("#user-role")).to_have_attribute("data-role", "operator")
    assert sql(dsn, "SELECT role FROM auth.users WHERE email = $1", WORKER)[0]["role"] == "operator"
    page.get_by_role("button", name="Отключить").click()
    expect(page.locator("#user-state")).to_have_attribute("data-disabled", "true")
    shot(page, "admin-user")
    page.goto("/admin/users")
    expect(page.locator(f"#users tr[data-user='{WORKER}'] [data-disabled]")).to_have_attribute("data-disabled", "true")
    shot(page, "admin-users")
    # Nobody disables themselves: the API's refusal, shown.
    page.goto(f"/admin/users/{_user_id(dsn, ADMIN)}")
    page.get_by_role("button", name="Отключить").click()
    expect(page.locator("#form-error")).to_contain_text("you cannot disable or demote yourself")
    # A form posted from elsewhere (no Origin of this site) changes nothing.
    refused = page.request.post(f"{base}/admin/users/{_user_id(dsn, CUSTOMER)}", form={"action": "disable"},
                                headers={"Origin": "https://evil.example"})
    assert refused.status == 403
    assert not sql(dsn, "SELECT disabled FROM auth.users WHERE email = $1", CUSTOMER)[0]["disabled"]

    ctx = new_context(browser, base)
    try:
        other = ctx.new_page()
        login(other, WORKER)  # disabled: cannot log in any more
        expect(other.locator("#form-error")).to_contain_text("Учётная запись отключена")
        login(other, CUSTOMER)  # a customer: no admin link, 403 on every admin page
        expect(other.locator(".who")).to_contain_text(CUSTOMER)
        assert _admin_links(other) == []
        for path in ("/admin", "/admin/connections", "/admin/users", "/admin/runtime"):
            assert other.goto(path).status == 403, path  # type: ignore[union-attr]
            expect(other.locator("#forbidden h1")).to_have_text("Доступ запрещён")
            assert _admin_links(other) == []
        shot(other, "admin-forbidden")
    finally:
        ctx.close()


def test_another_organisations_objects_are_not_found(page: Page, orgs: dict) -> None:
    login(page, ADMIN)
    for path in (f"/admin/connections/{orgs['other_connection']}", f"/admin/users/{orgs['other_user']}",
                 f"/admin/users/{uuid.uuid4()}", "/admin/users/not-a-user-id", "/admin/connections/no-such-one"):
        assert page.goto(path).status == 404, path  # type: ignore[union-attr]
        expect(page.locator("#not-found")).to_contain_text("Такого объекта нет")
    shot(page, "admin-not-found")
    # Nor can it be changed or read through a form.
    assert page.request.post(f"{page.url.split('/admin')[0]}/admin/connections/{orgs['other_connection']}/dry-run",
                             headers={"Origin": page.url.split('/admin')[0]}).status == 404


def test_staff_see_partners_paths_and_a_dry_run_of_a_pasted_sample(page: Page, orgs: dict, runtime: dict) -> None:
    pid, key = "cab-admin-partner", "cab-admin-secret-key"
    doc = {"partner_id": pid, "name": "Сбытовая компания", "base_url": "http://192.0.2.1:8080", "enabled": False,
           "auth": {"kind": "api_key", "key": key},
           "devices": [{"external_id": "m-1", "device_id": f"{pid}-m-1"}],
           "paths": [{"name": "c", "url": "/readings", "format": "csv",
                      "readings": {"device": "meter", "timestamp": "time", "quantity": "quantity", "value": "value",
                                   "unit": "unit", "quantity_map": {"energy": "1-0:1.8.0"}}}]}
    status, body = _api(runtime, "POST", "/api/v1/partners", doc)
    assert status == 201, body
    try:
        login(page, STAFF)
        page.goto("/admin/partners")
        expect(page.locator(f"#partners tr[data-partner='{pid}']")).to_contain_text("c")
        assert key not in page.content()
        page.locator(f"#partners a[href='/admin/partners/{pid}']").click()
        expect(page.locator("#paths tr[data-path='c']")).to_contain_text("csv")
        assert key not in page.content()
        page.get_by_label("Образец ответа").fill("meter,time,quantity,value,unit\r\n"
                                                 "m-1,2026-11-26T08:00:00Z,energy,1500,Wh\r\n"
                                                 "m-9,2026-11-26T08:00:00Z,energy,1,Wh\r\n")
        page.get_by_role("button", name="Пробный опрос").click()
        expect(page.locator("#dry-run-summary")).to_have_text("Записей: 2, показаний: 1, отклонено: 1.")
        expect(page.locator("#mapped")).to_contain_text(f"{pid}-m-1")
        expect(page.locator("#mapped .value")).to_have_text("1,500")
        expect(page.locator("#refused")).to_contain_text("unknown device 'm-9'")
        assert key not in page.content()
        shot(page, "admin-partner-dry-run")
        page.get_by_label("Образец ответа").fill("")
        page.get_by_role("button", name="Пробный опрос").click()
        expect(page.locator("#e-sample")).to_contain_text("Заполните")
        assert page.goto("/admin/partners/no-such-partner").status == 404  # type: ignore[union-attr]
        assert not sql(runtime["settings"].pg_dsn, "SELECT 1 FROM monitoring.readings WHERE device_id = $1",
                       f"{pid}-m-1")
    finally:
        _api(runtime, "DELETE", f"/api/v1/partners/{pid}")


def test_the_users_list_is_paged(page: Page, orgs: dict, runtime: dict) -> None:
    """55 more users in the other organisation (written straight to the table with a hash no password matches:
    the list, not the creation, is under test): its admin sees them 50 a page, every one once, in e-mail order."""
    dsn = runtime["settings"].pg_dsn
    emails = [f"paged-{i:03d}@cab-admin-other.example" for i in range(55)]
    sql(dsn, "INSERT INTO auth.users (email, password_hash, organisation_id, role) SELECT e, '$argon2id$unusable', $2,"
             " 'customer' FROM unnest($1::text[]) AS e ON CONFLICT DO NOTHING", emails, orgs["other"])
    login(page, OTHER)
    page.goto("/admin/users")
    first = page.locator("#users tbody tr").evaluate_all("rows => rows.map(r => r.dataset.user)")
    assert len(first) == 50
    page.locator(".pager .next-page").click()
    second = page.locator("#users tbody tr").evaluate_all("rows => rows.map(r => r.dataset.user)")
    assert sorted(first + second) == sorted([*emails, OTHER]) and first + second == sorted(first + second)
    expect(page.locator(".pager .next-page")).to_have_count(0)
    fits_a_phone(page, "admin-users-phone")
