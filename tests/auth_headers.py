"""Bearer headers for tests of authenticated APIs: a token signed with the run's key, as the users
service would issue after a login (tests of login itself go through /api/v1/auth/token)."""
from __future__ import annotations

from uuid import UUID, uuid4

from meterray.identity import Principal, Role
from meterray.settings import Settings
from meterray.tokens import issue_access_token


def bearer(settings: Settings, role: Role = Role.ADMIN, organisation_id: UUID | None = None,
           user_id: UUID | None = None, ttl_s: int = 900) -> dict[str, str]:
    who = Principal(user_id=user_id or uuid4(), organisation_id=organisation_id, role=role)
    return {"Authorization": f"Bearer {issue_access_token(who, settings.signing_key, ttl_s).token}"}
