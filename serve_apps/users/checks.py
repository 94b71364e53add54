"""The registration's external checks behind the result cache: api-fns `egr` and the supply-contract
check. Only definitive answers (found / not found) are cached; errors never are, so a retry after an
outage asks again, while a retry after a refused password does not spend the api-fns quota twice."""
from __future__ import annotations

import dataclasses

from meterray.auth_backends import AuthBackends, ContractCheck, InnCheck
from meterray.settings import Settings
from protocols.fns.client import FnsClient
from protocols.fns.egr import Company
from protocols.gkh.client import GkhClient
from protocols.gkh.contracts import SupplyContract
from storage.postgres import auth_cache
from storage.postgres.auth import Db

FNS_CACHE = "api-fns/egr"
GKH_CACHE = "gkh/supply-contract"


class ExternalChecks:
    def __init__(self, settings: Settings, backends: AuthBackends) -> None:
        self._ttl = settings.check_cache_ttl_s
        self.fns = (FnsClient(settings.fns_url, settings.fns_api_key.get_secret_value(),
                              timeout_s=settings.external_timeout_s) if backends.inn is InnCheck.FNS else None)
        self.gkh = (GkhClient(settings.gkh_url, settings.gkh_api_key.get_secret_value(),
                              timeout_s=settings.external_timeout_s) if backends.contract is ContractCheck.GKH
                    else None)

    async def company(self, db: Db, inn: str) -> Company | None:
        """The register's card of `inn` (None: no such organisation). Raises protocols.upstream errors."""
        assert self.fns is not None
        hit = await auth_cache.cached(db, FNS_CACHE, inn)
        if hit is not None:
            return Company(**hit["company"]) if hit["found"] else None
        company = await self.fns.egr(inn)
        await auth_cache.remember(db, FNS_CACHE, inn, {"found": company is not None, "company": (
            dataclasses.asdict(company) if company else None)}, self._ttl)
        return company

    async def contract(self, db: Db, number: str, inn: str) -> SupplyContract | None:
        assert self.gkh is not None
        key = f"{inn}\x1f{number}"  # unit separator: no contract number contains it (control characters refused)
        hit = await auth_cache.cached(db, GKH_CACHE, key)
        if hit is not None:
            return SupplyContract(**hit["contract"]) if hit["found"] else None
        found = await self.gkh.check(number, inn)
        await auth_cache.remember(db, GKH_CACHE, key, {"found": found is not None, "contract": (
            dataclasses.asdict(found) if found else None)}, self._ttl)
        return found

    async def close(self) -> None:
        for client in (self.fns, self.gkh):
            if client is not None:
                await client.close()
