"""POST /api/v1/auth/register: an organisation (checked by INN), its supply contract and its first user.

Order: every local rule at once (INN checksum first), then "already registered" (both cheap, before any
external quota is spent), then api-fns `egr`, then the contract check, then one transaction.
"""
from __future__ import annotations

from fastapi import APIRouter

from meterray.auth_backends import ContractCheck, InnCheck
from meterray.identity import Role, contract_number_problem, email_problem, normalise_email
from meterray.inn import inn_problem
from meterray.passwords import password_problems
from protocols.fns.egr import Company
from protocols.upstream import InvalidRequest, UpstreamError
from serve_apps.deps import Db
from serve_apps.users import errors
from serve_apps.users.me import user_out
from serve_apps.users.schemas import RegisterIn, UserOut
from serve_apps.users.security import hash_password
from serve_apps.users.state import State, UsersState
from storage.postgres import auth as auth_repo

router = APIRouter(tags=["auth"])


def _local_problems(body: RegisterIn, email: str) -> list[tuple[str, str, str]]:
    problems = []
    if (why := inn_problem(body.inn)) is not None:
        problems.append(("inn", why, "inn_invalid"))
    if (why := email_problem(email)) is not None:
        problems.append(("email", why, "email_invalid"))
    problems += [("password", why, "password_policy")
                 for why in password_problems(body.password, email=email, inn=body.inn)]
    if (why := contract_number_problem(body.contract_number)) is not None:
        problems.append(("contract_number", why, "contract_number_invalid"))
    return problems


async def _check_inn(state: UsersState, db: Db, inn: str) -> auth_repo.NewOrganisation:
    if state.backends.inn is InnCheck.CHECKSUM_ONLY:
        return auth_repo.NewOrganisation(inn=inn, inn_verified_by=InnCheck.CHECKSUM_ONLY.value)
    try:
        company: Company | None = await state.checks.company(db, inn)
    except UpstreamError as err:
        raise errors.upstream_unavailable(err, "INN check (api-fns)") from None
    if company is None:
        raise errors.field_error("inn", "no organisation or entrepreneur with this INN in ЕГРЮЛ/ЕГРИП", "inn_not_found")
    if not company.active:
        raise errors.field_error("inn", f"the organisation is not active (register status: {company.status})",
                                 "inn_inactive")
    return auth_repo.NewOrganisation(
        inn=inn, inn_verified_by=InnCheck.FNS.value, kind=company.kind, name=company.name,
        short_name=company.short_name, kpp=company.kpp, ogrn=company.ogrn, address=company.address,
        register_status=company.status)


async def _check_contract(state: UsersState, db: Db, number: str, inn: str) -> auth_repo.NewContract:
    if state.backends.contract is ContractCheck.UNVERIFIED:
        return auth_repo.NewContract(contract_number=number, verified_by=ContractCheck.UNVERIFIED.value)
    try:
        found = await state.checks.contract(db, number, inn)
    except InvalidRequest as err:
        raise errors.field_error("contract_number", f"the contract check refuses this number: {err.message}",
                                 "contract_invalid") from None
    except UpstreamError as err:
        raise errors.upstream_unavailable(err, "supply contract check") from None
    if found is None or (found.counterparty_inn is not None and found.counterparty_inn != inn):
        raise errors.field_error("contract_number", "no electricity supply contract with this number for this INN",
                                 "contract_not_found")
    if not found.in_force:
        raise errors.field_error(
            "contract_number", f"the supply contract is not in force (state {found.contract_state}, version "
                               f"{found.version_status}; needed: Proceed and Posted)", "contract_not_in_force")
    return auth_repo.NewContract(
        contract_number=number, verified_by=ContractCheck.GKH.value, contract_guid=found.contract_guid,
        contract_state=found.contract_state, version_status=found.version_status, supplier_name=found.supplier_name)


@router.post("/register", status_code=201, response_model=UserOut,
             responses={409: {"description": "the e-mail or the INN is already registered"},
                        422: {"description": "a field is refused; `loc` names it"},
                        503: {"description": "an external check is down: nothing was created, retry later"}})
async def register(body: RegisterIn, db: Db, state: State) -> UserOut:
    email = normalise_email(body.email)
    problems = _local_problems(body, email)
    if problems:
        raise errors.fields_error(problems)
    clash = await auth_repo.taken(db, email, body.inn)
    if clash is not None:
        raise errors.field_error(clash, f"this {'e-mail' if clash == 'email' else 'INN'} is already registered",
                                 "already_registered", status=409)
    organisation = await _check_inn(state, db, body.inn)
    contract = await _check_contract(state, db, body.contract_number, body.inn)
    password_hash = await hash_password(body.password)
    try:
        user_id, _ = await auth_repo.register(db, organisation, contract, email, password_hash, Role.CUSTOMER.value)
    except auth_repo.AlreadyRegistered as err:
        raise errors.field_error(err.field, "registered meanwhile by another request", "already_registered",
                                 status=409) from None
    errors.log.info("registered organisation %s (INN by %s, contract %s)", body.inn, organisation.inn_verified_by,
                    contract.verified_by)
    out = await user_out(db, user_id)
    assert out is not None
    return out
