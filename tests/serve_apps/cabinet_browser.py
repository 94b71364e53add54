"""What every browser test of the web cabinet shares: Playwright driving Debian's chromium (headless; its own
browser download is not available here), a Russian browser in Moscow time, screenshots under var/screenshots/
(git-ignored), sign-up and login through the cabinet's own forms, and SQL from a thread of its own (Playwright's
sync API keeps an event loop running in the test's thread).

The fixtures (base, browser, context, page) are in this folder's conftest.py. A test module signs its
customer up with an INN seed and an e-mail of its own: modules share one runtime and database."""
from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.fakes import valid_inn
from tests.pipeline.helpers import sql as _sql

CHROMIUM = "/usr/bin/chromium"  # Debian's package (scripts/system-deps.sh)
SHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
PASSWORD = "Синий-кит-плывёт 7"


def sql(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_sql, dsn, query, *args).result()


def new_context(browser: Browser, base: str) -> BrowserContext:
    # The Moscow time zone and a Russian browser: the cabinet's default language, dates in the user's zone.
    ctx = browser.new_context(base_url=base, locale="ru-RU", timezone_id="Europe/Moscow",
                              viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(30_000)
    return ctx


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def fits_a_phone(page: Page, name: str) -> None:
    """On a phone's screen (390 x 844) the page is no wider than the screen (wide tables scroll inside
    their `.scroll` box); a screenshot `name`, then back to the desktop size the tests use."""
    page.set_viewport_size({"width": 390, "height": 844})
    too_wide = page.evaluate("""[...document.querySelectorAll('body *')].filter(e => e.closest('.scroll') === null
        && e.getBoundingClientRect().right > window.innerWidth + 1).map(e => e.tagName + '.' + e.className)""")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), too_wide
    shot(page, name)
    page.set_viewport_size({"width": 1280, "height": 900})


def signup(page: Page, inn: str, email: str, password: str, contract: str) -> None:
    page.goto("/signup")
    page.get_by_label("ИНН организации или ИП").fill(inn)
    page.get_by_label("Электронная почта (логин)").fill(email)
    page.get_by_label("Пароль", exact=True).fill(password)
    page.get_by_label("Номер договора энергоснабжения").fill(contract)
    page.get_by_role("button", name="Зарегистрироваться").click()


def login(page: Page, email: str, password: str = PASSWORD) -> None:
    page.goto("/login")
    page.get_by_label("Электронная почта").fill(email)
    page.get_by_label("Пароль").fill(password)
    page.get_by_role("button", name="Войти").click()


def signed_up(browser: Browser, base: str, dsn: str, inn_seed: int, email: str, contract: str) -> uuid.UUID:
    """A new organisation and its admin, signed up through the cabinet's form: the organisation's id."""
    ctx = new_context(browser, base)
    try:
        page = ctx.new_page()
        signup(page, valid_inn(inn_seed), email, PASSWORD, contract)
        expect(page).to_have_url(re.compile(r"/$"))
        expect(page.locator(".who")).to_contain_text(email)
    finally:
        ctx.close()
    org: uuid.UUID = sql(dsn, "SELECT organisation_id FROM auth.users WHERE email = $1", email)[0]["organisation_id"]
    return org
