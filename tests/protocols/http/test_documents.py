"""JSON, CSV and XML answers become one shape: a document and its list of records."""
from __future__ import annotations

import pytest

from protocols.http.documents import DocumentError, lookup, parse


def test_json_records_at_a_path() -> None:
    doc, records = parse(b'{"data": {"items": [{"a": 1}, {"a": 2}]}, "next": "x"}', "json", "data.items")
    assert records == [{"a": 1}, {"a": 2}] and lookup(doc, "next") == "x"


def test_csv_rows_by_header() -> None:
    _, records = parse(b"\xef\xbb\xbfmeter,value\r\nm-1,1.5\r\nm-2,\"2,5\"\r\n", "csv", None)
    assert records == [{"meter": "m-1", "value": "1.5"}, {"meter": "m-2", "value": "2,5"}]


def test_xml_repeated_elements_are_a_list_one_is_a_list_too_and_attributes_are_fields() -> None:
    body = b'<r xmlns="urn:x"><items><i id="7"><v>1</v></i><i id="8"><v>2</v></i></items><next>n</next></r>'
    doc, records = parse(body, "xml", "r.items.i")
    assert records == [{"@id": "7", "v": "1"}, {"@id": "8", "v": "2"}] and lookup(doc, "r.next") == "n"
    _, one = parse(b"<r><items><i><v>1</v></i></items></r>", "xml", "r.items.i")
    assert one == [{"v": "1"}]
    _, none = parse(b"<r><items/></r>", "xml", "r.items.i")
    assert none == []


@pytest.mark.parametrize(("body", "fmt", "words"), [
    (b"{not json", "json", "not valid JSON"),
    (b"<r><unclosed></r>", "xml", "not valid XML"),
    (b'{"data": 5}', "json", "not a list"),
    (b"\xff\xfe", "csv", "not UTF-8"),
])
def test_unreadable_answers_say_why(body: bytes, fmt: str, words: str) -> None:
    with pytest.raises(DocumentError, match=words):
        parse(body, fmt, "data")


def test_lookup_indexes_lists_and_returns_none_for_what_is_absent() -> None:
    doc = {"a": [{"b": 1}, {"b": 2}]}
    assert lookup(doc, "a.1.b") == 2 and lookup(doc, "a.5.b") is None and lookup(doc, "x.y") is None
