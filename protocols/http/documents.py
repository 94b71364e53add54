"""A partner's answer as a document and its list of records, whatever the format.

JSON is parsed as it is; XML becomes the same shape (an element is a dict of its children and
attributes, `@name` for an attribute, repeated children a list, a leaf its text), so one dotted
field path (`data.items`, `meter.id`) works for both; CSV is a list of rows by header name
(RFC 4180) and has no document around it. Parsing never raises anything but DocumentError.
"""
from __future__ import annotations

import csv
import io
from functools import lru_cache
from typing import Any
from xml.etree import ElementTree

import orjson

MAX_BODY_BYTES = 32 * 2**20  # one page; a bigger answer is refused rather than parsed


class DocumentError(ValueError):
    """An answer that cannot be read as the configured format, with why."""


def parse(body: bytes, fmt: str, records_path: str | None) -> tuple[Any, list[Any]]:
    """(document, records). Records are usually dicts; whatever they are, the mapping checks them."""
    if len(body) > MAX_BODY_BYTES:
        raise DocumentError(f"answer of {len(body)} bytes exceeds the {MAX_BODY_BYTES}-byte limit of one page")
    if fmt == "csv":
        return {}, _csv(body)
    if fmt == "json":
        try:
            doc = orjson.loads(body) if body.strip() else None
        except orjson.JSONDecodeError as err:
            raise DocumentError(f"not valid JSON ({err})") from None
    elif fmt == "xml":
        doc = _xml(body)
    else:
        raise DocumentError(f"unknown format {fmt!r}")
    found = lookup(doc, records_path) if records_path else doc
    if found is None:
        return doc, []  # an empty XML list has no element at all; a JSON page may say null
    if isinstance(found, dict) and fmt == "xml":
        found = [found]  # one child element is not a list in the XML shape
    if not isinstance(found, list):
        raise DocumentError(f"records at {records_path or 'the top'} are {type(found).__name__}, not a list")
    return doc, found


def lookup(doc: Any, path: str | None) -> Any:
    """The value at a dotted path (`a.b.0.c`; a number indexes a list), or None where it is absent."""
    if path is None:
        return None
    if "." not in path:  # the common case, once per field of every record
        return doc.get(path) if isinstance(doc, dict) else None
    node = doc
    for key in _keys(path):
        if isinstance(node, dict):
            node = node.get(key)
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return None
    return node


@lru_cache(maxsize=1024)
def _keys(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def _csv(body: bytes) -> list[dict[str, str]]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DocumentError(f"CSV is not UTF-8 ({err})") from None
    try:
        return [dict(row) for row in csv.DictReader(io.StringIO(text))]
    except csv.Error as err:
        raise DocumentError(f"not valid CSV ({err})") from None


def _xml(body: bytes) -> Any:
    # The standard library parser expands no external entities; entity expansion bombs are bounded by
    # the body limit above (expat's own amplification limits apply since Python 3.12 / expat 2.4).
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as err:
        raise DocumentError(f"not valid XML ({err})") from None
    return {_tag(root): _element(root)}


def _tag(e: ElementTree.Element) -> str:
    return e.tag.rsplit("}", 1)[-1]  # namespaces are not part of a field path


def _element(e: ElementTree.Element) -> Any:
    children = list(e)
    if not children and not e.attrib:
        return (e.text or "").strip()
    grouped: dict[str, list[Any]] = {}
    for child in children:
        grouped.setdefault(_tag(child), []).append(_element(child))
    out: dict[str, Any] = {f"@{k}": v for k, v in e.attrib.items()}
    out.update({tag: values[0] if len(values) == 1 else values for tag, values in grouped.items()})
    return out
