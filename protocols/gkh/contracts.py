"""Parsing the supply-contract check's answers (shared/reference/external_apis.md §2.4), pure.

The facade is our own proposal, its vocabulary the GIS ZhKH XSD's: `ContractState` {NotTakeEffect,
Proceed, Expired}, `VersionStatus` {Posted, Terminated, Draft, Annul}. Business rule (§2.4): a valid
supply contract exists when `found` and `contract_state == "Proceed"` and `version_status == "Posted"`.
Errors: `{"error": {"code": UPSTREAM_UNAVAILABLE | INVALID_REQUEST | UNAUTHORIZED | RATE_LIMITED,
"message"}}` with 502 / 400 / 401 / 429.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from protocols.upstream import BadKey, InvalidRequest, RateLimited, Unavailable, UpstreamError

SERVICE = "supply-contract check"
CONTRACT_STATES = frozenset({"NotTakeEffect", "Proceed", "Expired"})
VERSION_STATUSES = frozenset({"Posted", "Terminated", "Draft", "Annul"})


@dataclass(frozen=True, slots=True)
class SupplyContract:
    contract_number: str
    contract_guid: str | None
    contract_state: str
    version_status: str
    counterparty_inn: str | None
    supplier_name: str | None
    signing_date: str | None

    @property
    def in_force(self) -> bool:
        return self.contract_state == "Proceed" and self.version_status == "Posted"


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def parse_check(raw: bytes) -> SupplyContract | None:
    """A 200 answer: the contract, or None when `found` is false."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise Unavailable(SERVICE, "the answer is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("found"), bool):
        raise Unavailable(SERVICE, "the answer has no boolean `found`")
    if not body["found"]:
        return None
    c = body.get("contract")
    if not isinstance(c, dict):
        raise Unavailable(SERVICE, "`found` is true but `contract` is not an object")
    state, version = c.get("contract_state"), c.get("version_status")
    number = _str(c.get("contract_number"))
    if state not in CONTRACT_STATES or version not in VERSION_STATUSES or number is None:
        raise Unavailable(SERVICE, "the contract lacks its number, or its state or version status is unknown")
    party, supplier = c.get("counterparty"), c.get("supplier")
    return SupplyContract(
        contract_number=number, contract_guid=_str(c.get("contract_guid")), contract_state=state,
        version_status=version,
        counterparty_inn=_str(party.get("inn")) if isinstance(party, dict) else None,
        supplier_name=_str(supplier.get("name")) if isinstance(supplier, dict) else None,
        signing_date=_str(c.get("signing_date")),
    )


def provider_error(status: int, raw: bytes, retry_after_s: float | None) -> UpstreamError:
    code, message = None, ""
    try:
        err = json.loads(raw).get("error")
        if isinstance(err, dict):
            code, message = err.get("code"), str(err.get("message", ""))[:200]
    except (ValueError, AttributeError):
        pass
    if status == 401 or code == "UNAUTHORIZED":
        return BadKey(SERVICE, f"the API key is refused (HTTP {status})")
    if status == 429 or code == "RATE_LIMITED":
        return RateLimited(SERVICE, "rate limited", retry_after_s=retry_after_s)
    if status == 400 or code == "INVALID_REQUEST":
        return InvalidRequest(SERVICE, message or "the request was refused as invalid")
    return Unavailable(SERVICE, f"HTTP {status}" + (f": {message}" if message else ""), retry_after_s=retry_after_s)
