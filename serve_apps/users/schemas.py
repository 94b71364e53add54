"""Request and response models of the users API (separate from storage rows)."""
from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from meterray.identity import Role

# Generous caps: the field rules (meterray.identity, meterray.passwords, meterray.inn) give the precise
# message; these only stop oversized input before any work is done.


class RegisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inn: str = Field(max_length=32, description="the organisation's INN: 10 digits, or 12 for an entrepreneur")
    email: str = Field(max_length=320, description="the first user's e-mail address; it is the login")
    password: str = Field(max_length=1024, description="10 to 128 characters")
    contract_number: str = Field(max_length=200, description="the electricity supply contract's number")


class ContractOut(BaseModel):
    contract_number: str
    verified: bool = Field(description="false: accepted without a contract check (development)")
    contract_state: str | None = None
    version_status: str | None = None
    supplier_name: str | None = None


class OrganisationOut(BaseModel):
    id: UUID
    inn: str
    name: str | None
    kpp: str | None
    ogrn: str | None
    address: str | None
    inn_verified_by: str = Field(description="'api-fns': found active in ЕГРЮЛ/ЕГРИП; 'checksum': only the "
                                             "check digits were verified (development)")
    contracts: list[ContractOut] = []


class UserOut(BaseModel):
    id: UUID
    email: str
    role: str
    created_at: datetime
    organisation: OrganisationOut | None


class TokenOut(BaseModel):
    """RFC 6749 §5.1."""

    access_token: str
    token_type: str = "bearer"
    refresh_token: str
    expires_in: int = Field(description="seconds until the access token expires")


class RefreshIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: str = Field(max_length=200)


class ManagedUserOut(BaseModel):
    id: UUID
    email: str
    role: Role
    organisation_id: UUID | None = Field(description="null: a platform admin")
    disabled: bool
    created_at: datetime


class UserPage(BaseModel):
    users: list[ManagedUserOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class UserCreateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(max_length=320, description="the new user's e-mail address; it is the login")
    password: str = Field(max_length=1024, description="10 to 128 characters; tell it to the user")
    role: Role
    organisation_id: UUID | None = Field(
        None, description="default: the caller's organisation; platform staff give it (or null for a platform admin)")


class UserPatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    disabled: bool | None = Field(None, description="true: the user can no longer log in or refresh a session")
