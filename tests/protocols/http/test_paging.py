"""Requests of a path and the walk through pages of each kind (pure)."""
from __future__ import annotations

from meterray.partners import PathConfig
from protocols.http.paging import Window, build_request, link_next, next_state

W = Window(1_795_680_000_000, 1_795_680_060_000)


def _path(pagination: dict, **extra: object) -> PathConfig:
    return PathConfig.model_validate({"name": "r", "url": "/v1/{since_s}/readings", "query": {"to": "{until}"},
                                      "pagination": pagination, "readings": {
                                          "device": "d", "timestamp": "t", "quantity": "q", "value": "v"}, **extra})


def test_placeholders_fill_url_and_query() -> None:
    req = build_request("http://p.example/base", _path({"kind": "none"}), W, {})
    assert req.url == "http://p.example/base/v1/1795680000/readings"
    assert req.params == {"to": "2026-11-26T08:01:00.000Z"}


def test_page_numbers_until_a_short_page() -> None:
    p = _path({"kind": "page", "size": 10})
    assert build_request("http://x", p, W, {}).params["page"] == "1"
    s = next_state(p, {}, {}, {}, 10, "u")
    assert s == {"page": 2} and build_request("http://x", p, W, s).params["page"] == "2"
    assert next_state(p, s, {}, {}, 3, "u") is None


def test_offsets_advance_by_what_came() -> None:
    p = _path({"kind": "offset", "limit": 5})
    assert next_state(p, {"offset": 5}, {}, {}, 5, "u") == {"offset": 10}
    assert next_state(p, {"offset": 10}, {}, {}, 0, "u") is None


def test_cursor_from_body_or_header_and_a_repeated_token_ends() -> None:
    p = _path({"kind": "cursor", "next_field": "meta.next"})
    assert next_state(p, {}, {"meta": {"next": "abc"}}, {}, 1, "u") == {"cursor": "abc"}
    assert build_request("http://x", p, W, {"cursor": "abc"}).params["cursor"] == "abc"
    assert next_state(p, {"cursor": "abc"}, {"meta": {"next": "abc"}}, {}, 1, "u") is None
    assert next_state(p, {}, {"meta": {"next": None}}, {}, 1, "u") is None
    h = _path({"kind": "cursor", "next_header": "X-Next"}, format="csv")
    assert next_state(h, {}, {}, {"X-Next": "t2"}, 1, "u") == {"cursor": "t2"}


def test_next_links_from_body_or_link_header_relative_to_the_page() -> None:
    p = _path({"kind": "link", "next_field": "links.next"})
    s = next_state(p, {}, {"links": {"next": "/v1/readings?page=2"}}, {}, 1, "http://x/v1/readings?page=1")
    assert s == {"url": "http://x/v1/readings?page=2"}
    req = build_request("http://x", p, W, s)
    assert req.url == "http://x/v1/readings?page=2" and req.params == {}
    h = _path({"kind": "link"})
    assert next_state(h, {}, {}, {"Link": '<http://x/a?c=1>; rel="prev", <http://x/a?c=3>; rel="next"'}, 1,
                      "http://x/a") == {"url": "http://x/a?c=3"}
    assert link_next('<http://x/a>; rel="last"') is None
