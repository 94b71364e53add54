"""Opaque keyset cursors shared by the paged lists of every API (devices, users): versioned JSON holding the
last key of a page, base64url without padding. A cursor that does not decode is a 422 saying what to send."""
from __future__ import annotations

import base64
import binascii

import orjson
from fastapi import HTTPException

_CURSOR_VERSION = 1


def encode_cursor(last_key: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"v": _CURSOR_VERSION, "after": last_key})).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = orjson.loads(raw)
        if isinstance(data, dict) and data.get("v") == _CURSOR_VERSION and isinstance(data.get("after"), str):
            return str(data["after"])
    except (binascii.Error, ValueError):
        pass
    raise HTTPException(422, "invalid cursor: pass the `next_cursor` of the previous page unchanged, "
                             "or omit `cursor` for the first page")
