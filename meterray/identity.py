"""Who is calling: the roles of DESIGN.md (HTTP) and the principal an access token names. Pure."""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from uuid import UUID


class Role(str, enum.Enum):
    """`admin` runs the platform, `operator` works for an organisation on its devices, `customer` is a
    registered organisation's user. Self-registration gives `customer`."""

    ADMIN = "admin"
    OPERATOR = "operator"
    CUSTOMER = "customer"


@dataclass(frozen=True, slots=True)
class Principal:
    """What a verified access token says: every Serve app scopes its queries by these (no lookup)."""

    user_id: UUID
    organisation_id: UUID | None  # None only for platform admins, who belong to no customer organisation
    role: Role


# RFC 5321 §4.5.3.1: local part ≤ 64 octets, path ≤ 256 (254 for the address itself). The pattern is
# deliberately plain (one @, a dot in the domain, no spaces or controls): delivery proves the rest.
MAX_EMAIL_LENGTH = 254
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f.]+$")


def normalise_email(email: str) -> str:
    """The stored form of an address: trimmed, lower-cased (one account per mailbox, whatever the case)."""
    return email.strip().lower()


def email_problem(email: str) -> str | None:
    if len(email) > MAX_EMAIL_LENGTH:
        return f"an e-mail address has at most {MAX_EMAIL_LENGTH} characters"
    if not _EMAIL.fullmatch(email):
        return "not an e-mail address (name@domain.tld)"
    return None


# The contract number as GIS ZhKH holds it (ContractNumber, 1-100 characters: external_apis.md §2.2).
MAX_CONTRACT_NUMBER_LENGTH = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def contract_number_problem(number: str) -> str | None:
    if not number.strip():
        return "the supply contract number is empty"
    if len(number) > MAX_CONTRACT_NUMBER_LENGTH:
        return f"a supply contract number has at most {MAX_CONTRACT_NUMBER_LENGTH} characters"
    if _CONTROL.search(number):
        return "a supply contract number has no control characters"
    return None
