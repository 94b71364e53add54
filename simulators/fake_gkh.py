"""A local stand-in for the supply-contract check facade (external_apis.md §2.4): `GET
/api/v1/supply-contracts/check?contract_number=&inn=` with a bearer key, answering `found`/`contract` in
GIS ZhKH's vocabulary and the error envelope `{"error": {"code", "message"}}` (400/401/429/502), plus a
malformed answer and a timeout. `calls` counts the checks that reached it."""
from __future__ import annotations

import asyncio
import enum
from collections import Counter
from typing import Any

from aiohttp import web

from simulators.http_thread import ThreadedServer


class GkhFault(str, enum.Enum):
    NONE = "none"
    UNAUTHORIZED = "unauthorized"  # 401 UNAUTHORIZED
    RATE_LIMITED = "rate_limited"  # 429 RATE_LIMITED with Retry-After
    SERVER_ERROR = "server_error"  # 502 UPSTREAM_UNAVAILABLE (GIS ZhKH behind it is down)
    MALFORMED = "malformed"  # 200, not JSON
    TIMEOUT = "timeout"


def contract(number: str, inn: str, *, state: str = "Proceed", version_status: str = "Posted") -> dict[str, Any]:
    """A `contract` object as §2.4 shows it."""
    return {
        "contract_root_guid": "8c0b7a7e-1f4e-4a0e-9c7d-0d3c2b1a0f11",
        "contract_guid": "1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed",
        "contract_number": number, "signing_date": "2023-01-15", "effective_date": "2023-02-01",
        "completion_date": None, "indefinite_term": True, "contract_state": state,
        "version_status": version_status, "version_number": 2, "is_public_offer": False,
        "service_type": {"nsi_registry": 3, "code": "4", "name": "Электроснабжение"},
        "municipal_resource": {"nsi_registry": 239, "code": "2", "name": "Электрическая энергия"},
        "counterparty": {"kind": "RegOrg", "inn": inn, "name": "ООО \"Ромашка\""},
        "supplier": {"inn": "7736520080", "ogrn": "1057746557329", "name": "ПАО \"Мосэнергосбыт\""},
        "objects": [],
    }


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


class FakeGkh:
    def __init__(self, port: int, api_key: str, host: str = "127.0.0.1") -> None:
        self.api_key = api_key
        # contract number -> contract object; the facade answers found only for the counterparty's INN
        self.contracts: dict[str, dict[str, Any]] = {}
        self.fault = GkhFault.NONE
        self.slow_s = 30.0
        self.calls: Counter[str] = Counter()
        app = web.Application()
        app.router.add_get("/api/v1/supply-contracts/check", self._check)
        self._server = ThreadedServer(app, host, port)

    @property
    def url(self) -> str:
        return self._server.url

    def add(self, item: dict[str, Any]) -> None:
        self.contracts[item["contract_number"]] = item

    async def _check(self, request: web.Request) -> web.StreamResponse:
        number, inn = request.query.get("contract_number", ""), request.query.get("inn", "")
        self.calls[number] += 1
        fault = self.fault
        if fault is GkhFault.TIMEOUT:
            await asyncio.sleep(self.slow_s)
        if fault is GkhFault.UNAUTHORIZED or request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "UNAUTHORIZED", "invalid token")
        if fault is GkhFault.RATE_LIMITED:
            return _error(429, "RATE_LIMITED", "too many requests", **{"Retry-After": "20"})
        if fault is GkhFault.SERVER_ERROR:
            return _error(502, "UPSTREAM_UNAVAILABLE", "GIS ZhKH getState timed out")
        if fault is GkhFault.MALFORMED:
            return web.Response(status=200, text="<html>maintenance</html>", content_type="text/html")
        if not number or len(number) > 100 or not inn:
            return _error(400, "INVALID_REQUEST", "contract_number must be 1-100 characters and inn is required")
        found = self.contracts.get(number)
        if found is None or found["counterparty"]["inn"] != inn:
            return web.json_response({"found": False, "contract": None})
        return web.json_response({"found": True, "contract": found})

    def start(self) -> "FakeGkh":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()
