"""User management for admins: `GET/POST /api/v1/users`, `GET/PATCH /api/v1/users/{id}`.

Who may do what is meterray.access (users:manage): platform staff manage every user, an organisation's
admin its own organisation's users; operators and customers get 403. A user outside the caller's scope
answers 404. Nobody disables or demotes themselves (an organisation must not lock out its last admin by
accident; another admin can). Disabling revokes the user's refresh tokens: no new access token is issued.
"""
from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from meterray.access import may_assign
from meterray.identity import Principal, Role, email_problem, normalise_email
from meterray.passwords import password_problems
from serve_apps.auth import CurrentPrincipal, UsersScope
from serve_apps.deps import Db
from serve_apps.paging import decode_cursor, encode_cursor
from serve_apps.users import errors
from serve_apps.users.schemas import ManagedUserOut, UserCreateIn, UserPage, UserPatchIn
from serve_apps.users.security import hash_password
from storage.postgres import auth_users as repo
from storage.postgres.auth import AlreadyRegistered

router = APIRouter(tags=["users"])
MAX_PAGE = 500


def _out(u: repo.ManagedUser) -> ManagedUserOut:
    return ManagedUserOut(id=u.user_id, email=u.email, role=Role(u.role), organisation_id=u.organisation_id,
                          disabled=u.disabled, created_at=u.created_at)


def _not_found(user_id: uuid.UUID) -> HTTPException:
    return HTTPException(404, f"no user {user_id}")


@router.get("/", response_model=UserPage, summary="the users the caller manages, in e-mail order, a page at a time")
async def list_users(
    db: Db,
    scope: UsersScope,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: Annotated[str | None, Query(max_length=2000, description="`next_cursor` of the previous page")] = None,
    organisation_id: Annotated[uuid.UUID | None, Query(description="only this organisation's users")] = None,
) -> UserPage:
    after = decode_cursor(cursor) if cursor else None
    rows = await repo.list_users(db, organisation_id=scope.organisation_id, after=after, limit=limit + 1,
                                 of_organisation=organisation_id)
    page = [_out(u) for u in rows[:limit]]
    return UserPage(users=page, next_cursor=encode_cursor(page[-1].email) if len(rows) > limit else None)


@router.get("/{user_id}", response_model=ManagedUserOut)
async def get_user(user_id: uuid.UUID, db: Db, scope: UsersScope) -> ManagedUserOut:
    user = await repo.get_user(db, user_id, organisation_id=scope.organisation_id)
    if user is None:
        raise _not_found(user_id)
    return _out(user)


@router.post("/", status_code=201, response_model=ManagedUserOut,
             responses={403: {"description": "the caller may not create this role in this organisation"},
                        409: {"description": "the e-mail is already registered"}})
async def create_user(body: UserCreateIn, db: Db, who: CurrentPrincipal, scope: UsersScope) -> ManagedUserOut:
    email = normalise_email(body.email)
    problems = [("email", why, "email_invalid") for why in [email_problem(email)] if why is not None]
    problems += [("password", why, "password_policy") for why in password_problems(body.password, email=email)]
    if problems:
        raise errors.fields_error(problems)
    # Default: the caller's own organisation (a platform admin creating a platform admin sends null or nothing).
    org = body.organisation_id if "organisation_id" in body.model_fields_set else who.organisation_id
    _check_assign(who, body.role, org)
    try:
        user = await repo.create_user(db, email, await hash_password(body.password), body.role.value, org)
    except AlreadyRegistered:
        raise errors.field_error("email", "this e-mail is already registered", "already_registered",
                                 status=409) from None
    except repo.UnknownOrganisation:
        raise errors.field_error("organisation_id", "no such organisation", "organisation_not_found") from None
    errors.log.info("user %s created with role %s by %s", user.user_id, user.role, who.user_id)
    return _out(user)


@router.patch("/{user_id}", response_model=ManagedUserOut,
              responses={403: {"description": "the caller may not give this role"},
                         404: {"description": "no such user among those the caller manages"}})
async def patch_user(user_id: uuid.UUID, body: UserPatchIn, db: Db, who: CurrentPrincipal,
                     scope: UsersScope) -> ManagedUserOut:
    if body.role is None and body.disabled is None:
        raise HTTPException(422, "send `role` and/or `disabled`")
    user = await repo.get_user(db, user_id, organisation_id=scope.organisation_id)
    if user is None:
        raise _not_found(user_id)
    if user_id == who.user_id and (body.disabled or (body.role is not None and body.role is not who.role)):
        raise HTTPException(409, "you cannot disable or demote yourself; another admin can")
    if body.role is not None:
        _check_assign(who, body.role, user.organisation_id)
    updated = await repo.update_user(db, user_id, organisation_id=scope.organisation_id,
                                     role=None if body.role is None else body.role.value, disabled=body.disabled)
    if updated is None:  # removed meanwhile
        raise _not_found(user_id)
    errors.log.info("user %s changed by %s: role %s, disabled %s", user_id, who.user_id, updated.role,
                    updated.disabled)
    return _out(updated)


def _check_assign(who: Principal, role: Role, organisation_id: uuid.UUID | None) -> None:
    why = may_assign(who, role, organisation_id)
    if why is None:
        return
    if organisation_id is None and role is not Role.ADMIN:  # a request that cannot be right for anyone
        raise errors.field_error("organisation_id", why, "organisation_required")
    raise HTTPException(403, why)

