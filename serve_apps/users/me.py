"""GET /api/v1/me: the caller's own user, organisation and supply contracts."""
from __future__ import annotations

import uuid

from fastapi import APIRouter

from serve_apps.auth import CurrentPrincipal, unauthorized
from serve_apps.deps import Db
from serve_apps.users.schemas import ContractOut, OrganisationOut, UserOut
from storage.postgres import auth as auth_repo

router = APIRouter(tags=["auth"])


async def user_out(db: Db, user_id: uuid.UUID) -> UserOut | None:
    view = await auth_repo.user_view(db, user_id)
    if view is None:
        return None
    organisation = None
    if view.organisation_id is not None and view.inn is not None and view.inn_verified_by is not None:
        contracts = [ContractOut(contract_number=r["contract_number"], verified=r["verified_by"] == "gkh",
                                 contract_state=r["contract_state"], version_status=r["version_status"],
                                 supplier_name=r["supplier_name"])
                     for r in await auth_repo.contracts_of(db, view.organisation_id)]
        organisation = OrganisationOut(id=view.organisation_id, inn=view.inn, name=view.organisation_name,
                                       kpp=view.kpp, ogrn=view.ogrn, address=view.address,
                                       inn_verified_by=view.inn_verified_by, contracts=contracts)
    return UserOut(id=view.user_id, email=view.email, role=view.role, created_at=view.created_at,
                   organisation=organisation)


@router.get("/", response_model=UserOut, summary="the caller's own user and organisation")
async def me(who: CurrentPrincipal, db: Db) -> UserOut:
    out = await user_out(db, who.user_id)
    if out is None:  # deleted or disabled since the token was issued
        raise unauthorized("this user no longer exists or is disabled")
    return out
