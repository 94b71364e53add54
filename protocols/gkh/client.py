"""The supply-contract check client: `GET <base>/api/v1/supply-contracts/check?contract_number=…&inn=…`
with `Authorization: Bearer <key>` (external_apis.md §2.4). Failures leave as typed upstream errors."""
from __future__ import annotations

import asyncio

import aiohttp

from protocols.fns.client import retry_after
from protocols.gkh.contracts import SERVICE, SupplyContract, parse_check, provider_error
from protocols.upstream import Unavailable

MAX_BODY_BYTES = 1 << 20
CHECK_PATH = "/api/v1/supply-contracts/check"


class GkhClient:
    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 10.0) -> None:
        self._url = base_url.rstrip("/") + CHECK_PATH
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "GkhClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self._session

    async def check(self, contract_number: str, inn: str) -> SupplyContract | None:
        """The contract `contract_number` of the organisation `inn`, or None when there is none."""
        try:
            async with self._http().get(self._url, params={"contract_number": contract_number, "inn": inn}) as resp:
                raw = await resp.content.read(MAX_BODY_BYTES + 1)
                if len(raw) > MAX_BODY_BYTES:
                    raise Unavailable(SERVICE, "the answer is larger than any contract")
                if resp.status != 200:
                    raise provider_error(resp.status, raw, retry_after(resp.headers))
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            raise Unavailable(SERVICE, f"no answer ({type(err).__name__})") from None
        return parse_check(raw)
