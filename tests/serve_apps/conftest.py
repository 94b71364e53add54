"""Browser fixtures for the web cabinet's tests (see cabinet_browser.py): one headless chromium per module."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.serve_apps.cabinet_browser import CHROMIUM, new_context

# Assertions wait as long as the pages' own actions may (new_context: 30 s): on a loaded 2-core machine a
# login's redirect can take longer than Playwright's default 5 s.
expect.set_options(timeout=30_000)


@pytest.fixture(scope="module")
def base(runtime: dict) -> str:
    return str(runtime["api"])


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture
def context(browser: Browser, base: str) -> Iterator[BrowserContext]:
    ctx = new_context(browser, base)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()
