"""Requests of a retrieval path and the walk through its pages (pure).

A page is asked for with a `PageState` (a small JSON-able dict, the thing a cursor saves): `{}` for
the first page, then `{"page": n}`, `{"offset": n}`, `{"cursor": token}` or `{"url": next}` by the
path's pagination. `next_state` reads the answer and returns the state of the next page, or None
when this was the last one.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urljoin

from meterray.partners import CursorToken, NextLink, NoPages, Offset, PageNumber, PathConfig
from protocols.http.documents import lookup

PageState = dict[str, Any]
_LINK = re.compile(r'<([^>]*)>\s*((?:;\s*[^;,]+)*)')


@dataclass(frozen=True, slots=True)
class Window:
    """The time range a run asks for, epoch milliseconds, `until` exclusive."""

    since_ms: int
    until_ms: int

    def placeholders(self) -> dict[str, str]:
        def iso(ms: int) -> str:
            return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

        return {"since": iso(self.since_ms), "until": iso(self.until_ms), "since_ms": str(self.since_ms),
                "until_ms": str(self.until_ms), "since_s": str(self.since_ms // 1000),
                "until_s": str(self.until_ms // 1000)}


@dataclass(frozen=True, slots=True)
class PageRequest:
    method: str
    url: str
    params: dict[str, str]
    headers: dict[str, str]


def build_request(base_url: str, path: PathConfig, window: Window, state: PageState) -> PageRequest:
    """The request of one page (without authentication: the client adds it)."""
    fill = window.placeholders()

    def sub(text: str) -> str:
        return re.sub(r"\{([a-z_]+)\}", lambda m: fill[m.group(1)], text)

    headers = {k: sub(v) for k, v in path.headers.items()}
    if "url" in state:  # a next link is the whole request: its own query, nothing added
        return PageRequest(path.method, str(state["url"]), {}, headers)
    url = urljoin(base_url.rstrip("/") + "/", sub(path.url).lstrip("/")) if not path.url.startswith(
        ("http://", "https://")) else sub(path.url)
    params = {k: sub(v) for k, v in path.query.items()}
    p = path.pagination
    if isinstance(p, PageNumber):
        params[p.param] = str(state.get("page", p.first))
        params[p.size_param] = str(p.size)
    elif isinstance(p, Offset):
        params[p.param] = str(state.get("offset", 0))
        params[p.limit_param] = str(p.limit)
    elif isinstance(p, CursorToken) and state.get("cursor"):
        params[p.param] = str(state["cursor"])
    return PageRequest(path.method, url, params, headers)


def next_state(path: PathConfig, state: PageState, doc: Any, headers: Mapping[str, str], records: int,
               url: str) -> PageState | None:
    """The state of the page after this one, or None when this was the last."""
    p = path.pagination
    if isinstance(p, NoPages):
        return None
    if isinstance(p, PageNumber):
        return {"page": int(state.get("page", p.first)) + 1} if records >= p.size else None
    if isinstance(p, Offset):
        return {"offset": int(state.get("offset", 0)) + records} if records >= p.limit else None
    if isinstance(p, CursorToken):
        token = headers.get(p.next_header) if p.next_header else lookup(doc, p.next_field)
        return {"cursor": str(token)} if token not in (None, "") and token != state.get("cursor") else None
    assert isinstance(p, NextLink)
    link = lookup(doc, p.next_field) if p.next_field else link_next(headers.get("Link", ""))
    if not link:
        return None
    nxt = urljoin(url, str(link))
    return {"url": nxt} if nxt != state.get("url") else None


def link_next(header: str) -> str | None:
    """The `rel="next"` target of an RFC 8288 Link header."""
    for target, params in _LINK.findall(header):
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "rel" and "next" in value.strip().strip('"').lower().split():
                return target
    return None
