"""Every Serve application's /docs and /redoc on the real Serve proxy: the pages reference only URLs of the
same origin (under the application's route prefix), and each of them answers 200: nothing is loaded from a
CDN, so the docs work on a machine without internet access."""
from __future__ import annotations

import re
import urllib.request
from urllib.parse import urljoin, urlsplit

import pytest

PREFIXES = ["", "/api/v1/auth", "/api/v1/me", "/api/v1/users", "/api/v1/notifications"]  # every Serve app
# Every URL a page can make the browser load: attributes, and the quoted URLs of its inline script.
_URL = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|\burl\s*:\s*["']([^"']+)["']"""
                  r"""|oauth2RedirectUrl\s*:\s*window\.location\.origin\s*\+\s*["']([^"']+)["']""")
_ANY_ABSOLUTE = re.compile(r"(?:https?:)?//[a-z0-9.-]+", re.I)


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return resp.status, resp.headers.get("content-type", ""), resp.read()


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_reference_only_same_origin_urls_that_answer(runtime: dict, prefix: str, page: str) -> None:
    base = runtime["api"]
    status, ctype, body = _get(f"{base}{prefix}{page}")
    assert status == 200 and ctype.startswith("text/html")
    html = body.decode()
    urls = [next(g for g in m.groups() if g) for m in _URL.finditer(html)]
    assert len(urls) >= 3, html  # the script, the favicon and the OpenAPI document at least
    assert not _ANY_ABSOLUTE.findall(html), f"an absolute URL in {prefix}{page}: {_ANY_ABSOLUTE.findall(html)}"
    origin = urlsplit(base)
    for url in urls:
        full = urljoin(f"{base}{prefix}{page}", url)
        assert urlsplit(full)[:2] == origin[:2], url
        assert urlsplit(full).path.startswith(prefix + "/"), f"{url} is outside the app's prefix {prefix!r}"
        if "oauth2-redirect" in url or url.endswith("openapi.json"):
            status, _, _ = _get(full)
        else:
            status, ctype, asset = _get(full)
            if url.endswith(".js"):  # the real library, not an empty file
                assert "javascript" in ctype and len(asset) > 500_000, (url, ctype, len(asset))
        assert status == 200, url
