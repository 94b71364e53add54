"""Parsing api-fns answers (shared/reference/external_apis.md §1.4-§1.9), pure.

Rules from the reference: `{"items": [{"ЮЛ"|"ИП": {...}}]}`; every value is a string; an empty or
missing `items` with HTTP 200 is "not found"; a non-2xx status, a body that is not JSON or a JSON body
with `error`/`Ошибка`/`message` is a provider error, never "not found". A quota message may come with
200 or 403 and is recognised by its words (лимит / исчерпан / превышено количество).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from protocols.upstream import BadKey, QuotaExhausted, RateLimited, Unavailable, UpstreamError

SERVICE = "api-fns"
_QUOTA_WORDS = ("лимит", "исчерпан", "превышено количество")
_ERROR_KEYS = ("error", "Ошибка", "message")


@dataclass(frozen=True, slots=True)
class Company:
    kind: str  # "legal_entity" (ЮЛ) or "entrepreneur" (ИП)
    inn: str
    name: str  # full name (НаимПолнЮЛ) or the entrepreneur's full name (ФИОПолн)
    short_name: str | None
    kpp: str | None  # legal entities only
    ogrn: str | None  # ОГРН or ОГРНИП
    address: str | None
    status: str  # as the register words it, e.g. "Действующее", "Ликвидировано"
    active: bool


def _text(v: Any) -> str | None:
    if isinstance(v, dict):  # F4: a status may come as {"Наим": ...} or {"Текст": ...}
        v = v.get("Наим") or v.get("Текст")
    return v.strip() if isinstance(v, str) and v.strip() else None


def is_active(status: str) -> bool:
    """F4: active when the status contains "действующ" (Действующее, Действующий); anything mentioning
    liquidation or termination is not, even "Действующее, в стадии ликвидации"."""
    s = status.lower()
    return "действующ" in s and not any(w in s for w in ("ликвид", "прекращ", "банкрот", "исключ"))


def parse_company(item: dict[str, Any]) -> Company:
    if isinstance(item.get("ЮЛ"), dict):
        d, kind = item["ЮЛ"], "legal_entity"
        name = _text(d.get("НаимПолнЮЛ")) or _text(d.get("НаимСокрЮЛ"))
    elif isinstance(item.get("ИП"), dict):
        d, kind = item["ИП"], "entrepreneur"
        name = _text(d.get("ФИОПолн")) or _text(d.get("ФИО"))
    else:
        raise Unavailable(SERVICE, "an egr item is neither ЮЛ nor ИП")
    inn = _text(d.get("ИНН")) or _text(d.get("ИННФЛ"))
    status = _text(d.get("Статус"))
    if not inn or not name or not status:
        raise Unavailable(SERVICE, "an egr item lacks its INN, name or status")
    address = d.get("Адрес")
    return Company(
        kind=kind, inn=inn, name=name, short_name=_text(d.get("НаимСокрЮЛ")), kpp=_text(d.get("КПП")),
        ogrn=_text(d.get("ОГРН")) or _text(d.get("ОГРНИП")),
        address=_text(address.get("АдресПолн")) if isinstance(address, dict) else _text(address),
        status=status, active=is_active(status),
    )


def _error_message(body: Any) -> str | None:
    if isinstance(body, dict):
        for key in _ERROR_KEYS:
            if isinstance(body.get(key), str):
                return str(body[key])
    return None


def provider_error(status: int, raw: bytes, retry_after_s: float | None) -> UpstreamError:
    """The typed error of a non-2xx answer (§1.9)."""
    try:
        text = _error_message(json.loads(raw)) or raw.decode("utf-8", "replace")
    except ValueError:
        text = raw.decode("utf-8", "replace")
    text = text.strip()[:200]
    if any(w in text.lower() for w in _QUOTA_WORDS):
        return QuotaExhausted(SERVICE, f"quota exhausted (HTTP {status}): {text}")
    if status in (401, 403):
        return BadKey(SERVICE, f"the API key is refused or not allowed from this address (HTTP {status})")
    if status == 429:
        return RateLimited(SERVICE, "rate limited (HTTP 429)", retry_after_s=retry_after_s)
    return Unavailable(SERVICE, f"HTTP {status}", retry_after_s=retry_after_s)


def parse_egr(raw: bytes) -> Company | None:
    """A 200 answer of `egr`: the first company, or None when the register has none (empty `items`)."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise Unavailable(SERVICE, "the answer is not JSON") from None
    if not isinstance(body, dict):
        raise Unavailable(SERVICE, "the answer is not a JSON object")
    message = _error_message(body)
    if message is not None:
        if any(w in message.lower() for w in _QUOTA_WORDS):
            raise QuotaExhausted(SERVICE, f"quota exhausted: {message[:200]}")
        raise Unavailable(SERVICE, f"error answer: {message[:200]}")
    items = body.get("items")
    if items is None or items == []:
        return None
    if not isinstance(items, list) or not isinstance(items[0], dict):
        raise Unavailable(SERVICE, "`items` is not a list of objects")
    return parse_company(items[0])
