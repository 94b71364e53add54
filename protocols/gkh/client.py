"""The supply-contract check client: `GET <base>/api/v1/supply-contracts/check?contract_number=…&inn=…`
with `Authorization: Bearer <key>` (external_apis.md §2.4). Failures leave as typed upstream errors."""
from __future__ import annotations

from protocols.gkh.contracts import SERVICE, SupplyContract, parse_check, provider_error
from protocols.upstream import UpstreamClient

MAX_BODY_BYTES = 1 << 20
CHECK_PATH = "/api/v1/supply-contracts/check"


class GkhClient(UpstreamClient):
    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 10.0) -> None:
        super().__init__(SERVICE, provider_error, timeout_s=timeout_s, max_body_bytes=MAX_BODY_BYTES,
                         headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"})
        self._url = base_url.rstrip("/") + CHECK_PATH

    async def check(self, contract_number: str, inn: str) -> SupplyContract | None:
        """The contract `contract_number` of the organisation `inn`, or None when there is none."""
        return parse_check(await self.get(self._url, {"contract_number": contract_number, "inn": inn},
                                          "the answer is larger than any contract"))
