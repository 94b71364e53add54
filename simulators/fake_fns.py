"""A local stand-in for api-fns.ru that answers `egr` in the documented format (external_apis.md §1),
including the documented and observed errors: 403 bad key (text body), quota (403 JSON or 200 JSON
with `error`), 429, 5xx, malformed JSON, a timeout. Tests switch faults with `fault`; `calls` counts the
`egr` requests that reached it (each one spends quota on the real service)."""
from __future__ import annotations

import asyncio
import enum
from collections import Counter
from typing import Any

from aiohttp import web

from simulators.http_thread import ThreadedServer


class FnsFault(str, enum.Enum):
    NONE = "none"
    BAD_KEY = "bad_key"  # 403, text body (§1.9 scenario 4)
    QUOTA = "quota"  # 403, JSON {"error": "Исчерпан лимит ..."} (§1.9 scenario 5)
    QUOTA_200 = "quota_200"  # 200 with the same JSON error (F4 also handles it so)
    RATE_LIMITED = "rate_limited"  # 429 with Retry-After
    SERVER_ERROR = "server_error"  # 502, HTML body
    MALFORMED = "malformed"  # 200, truncated JSON
    TIMEOUT = "timeout"  # answers after `slow_s`


def legal_entity(inn: str, name: str, *, kpp: str, ogrn: str, address: str,
                 status: str = "Действующее") -> dict[str, Any]:
    """An `items[]` element for a legal entity, shaped as §1.4 (every value a string)."""
    return {"ЮЛ": {
        "ИНН": inn, "КПП": kpp, "ОГРН": ogrn, "ДатаОГРН": "2002-08-16", "ДатаРег": "1991-06-20",
        "Статус": status, "НаимСокрЮЛ": name.upper(), "НаимПолнЮЛ": f"ОБЩЕСТВО С ОГРАНИЧЕННОЙ ОТВЕТСТВЕННОСТЬЮ {name}",
        "Адрес": {"КодРегион": inn[:2], "Индекс": "117312", "АдресПолн": address, "Дата": "2002-08-16"},
        "Руководитель": {"ВидДолжн": "Руководитель юридического лица", "ФИОПолн": "Иванов Иван Иванович"},
        "ОснВидДеят": {"Код": "35.14", "Текст": "Торговля электроэнергией"},
        "Контакты": {"Телефон": ["+74950000000"], "e-mail": ["info@example.ru"]},
    }}


def entrepreneur(inn: str, full_name: str, *, ogrnip: str, status: str = "Действующий") -> dict[str, Any]:
    """An `items[]` element for an individual entrepreneur (§1.5: ИННФЛ / ОГРНИП variants)."""
    return {"ИП": {"ФИОПолн": full_name, "ИННФЛ": inn, "ОГРНИП": ogrnip, "ДатаРег": "2004-03-01",
                   "Статус": status, "Адрес": {"АдресПолн": "г. Москва"}}}


class FakeFns:
    def __init__(self, port: int, api_key: str, host: str = "127.0.0.1") -> None:
        self.api_key = api_key
        self.companies: dict[str, dict[str, Any]] = {}
        self.fault = FnsFault.NONE
        self.slow_s = 30.0
        self.calls: Counter[str] = Counter()  # INN -> egr requests received
        app = web.Application()
        app.router.add_get("/api/egr", self._egr)
        self._server = ThreadedServer(app, host, port)

    @property
    def url(self) -> str:
        """The base URL a client is configured with (METERRAY_FNS_URL)."""
        return f"{self._server.url}/api"

    def add(self, item: dict[str, Any]) -> None:
        inner = next(iter(item.values()))
        self.companies[inner.get("ИНН") or inner["ИННФЛ"]] = item

    async def _egr(self, request: web.Request) -> web.StreamResponse:
        inn = request.query.get("req", "")
        self.calls[inn] += 1
        fault = self.fault
        if fault is FnsFault.TIMEOUT:
            await asyncio.sleep(self.slow_s)
        if fault is FnsFault.BAD_KEY or request.query.get("key") != self.api_key:
            return web.Response(status=403, text="Ошибка: неверный ключ")
        if fault is FnsFault.QUOTA:
            return web.json_response({"error": "Исчерпан лимит запросов по методу egr"}, status=403)
        if fault is FnsFault.QUOTA_200:
            return web.json_response({"error": "Превышено количество запросов по методу egr"})
        if fault is FnsFault.RATE_LIMITED:
            return web.Response(status=429, text="Too Many Requests", headers={"Retry-After": "30"})
        if fault is FnsFault.SERVER_ERROR:
            return web.Response(status=502, text="<html><body>502 Bad Gateway</body></html>",
                                content_type="text/html")
        if fault is FnsFault.MALFORMED:
            return web.Response(status=200, text='{"items": [{"ЮЛ": {"ИНН": "77', content_type="application/json")
        item = self.companies.get(inn)
        return web.json_response({"items": [item] if item else []})

    def start(self) -> "FakeFns":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()
