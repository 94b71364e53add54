"""Which external checks the users service can make, decided once from the settings. Pure.

With no API key configured, development falls back (INN by checksum only; contracts accepted and marked
unverified) and says so at start-up; METERRAY_ENV=production refuses to start instead (never a silent
fallback), as it refuses the public development signing key (meterray.settings).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from meterray.settings import Settings


class InnCheck(str, enum.Enum):
    FNS = "api-fns"  # checksum, then ЕГРЮЛ/ЕГРИП via api-fns egr
    CHECKSUM_ONLY = "checksum"


class ContractCheck(str, enum.Enum):
    GKH = "gkh"  # the supply-contract check service
    UNVERIFIED = "unverified"  # accepted, marked unverified


class BackendConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class AuthBackends:
    inn: InnCheck
    contract: ContractCheck
    development_signing_key: bool

    def warnings(self) -> list[str]:
        """What a person must know at start-up: every way this service is weaker than production."""
        out = []
        if self.inn is InnCheck.CHECKSUM_ONLY:
            out.append("METERRAY_FNS_API_KEY is not set: registration checks the INN by checksum only "
                       "(no api-fns lookup; organisation name, KPP, OGRN and address stay empty)")
        if self.contract is ContractCheck.UNVERIFIED:
            out.append("METERRAY_GKH_API_KEY is not set: supply contracts are accepted unchecked and stored "
                       "as unverified")
        if self.development_signing_key:
            out.append("METERRAY_TOKEN_SIGNING_KEY is not set: access tokens are signed with the PUBLIC "
                       "development key; anyone can forge them")
        return out


def auth_backends(settings: Settings) -> AuthBackends:
    """The checks in force; raises BackendConfigError in production when one would fall back."""
    backends = AuthBackends(
        inn=InnCheck.FNS if settings.fns_api_key.get_secret_value() else InnCheck.CHECKSUM_ONLY,
        contract=ContractCheck.GKH if settings.gkh_api_key.get_secret_value() else ContractCheck.UNVERIFIED,
        development_signing_key=not settings.token_signing_key.get_secret_value(),
    )
    if settings.env == "production" and backends.warnings():
        raise BackendConfigError("METERRAY_ENV=production refuses to fall back: " + "; ".join(backends.warnings()))
    return backends
