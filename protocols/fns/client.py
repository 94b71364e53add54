"""The api-fns HTTP client: `GET <base>/egr?req=<INN>&key=<key>` (external_apis.md §1.2-§1.3).

Every failure leaves as a typed protocols.upstream error; none carries the URL (the key is in its query).
"""
from __future__ import annotations

from protocols.fns.egr import SERVICE, Company, parse_egr, provider_error
from protocols.upstream import UpstreamClient

MAX_BODY_BYTES = 1 << 20  # a full egr card is a few kB; more is not the documented answer


class FnsClient(UpstreamClient):
    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 10.0) -> None:
        super().__init__(SERVICE, provider_error, timeout_s=timeout_s, max_body_bytes=MAX_BODY_BYTES)
        self._base = base_url.rstrip("/")
        self._key = api_key

    async def egr(self, inn: str) -> Company | None:
        """The register's card of `inn`, or None when api-fns has no such organisation."""
        return parse_egr(await self.get(f"{self._base}/egr", {"req": inn, "key": self._key},
                                        "the answer is larger than any egr card"))
