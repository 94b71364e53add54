"""Login (OAuth2 password flow, RFC 6749 §4.3), refresh with rotation and reuse detection, logout."""
from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.security import OAuth2PasswordRequestForm

from meterray.identity import MAX_EMAIL_LENGTH, Principal, Role, normalise_email
from meterray.passwords import MAX_LENGTH as MAX_PASSWORD_LENGTH
from meterray.tokens import issue_access_token
from serve_apps.auth import unauthorized
from serve_apps.deps import Db
from serve_apps.users.schemas import RefreshIn, TokenOut
from serve_apps.users.security import hash_password, new_refresh_token, refresh_digest, verify_password
from serve_apps.users.state import State, UsersState, client_address
from storage.postgres import auth as auth_repo
from storage.postgres import auth_tokens

router = APIRouter(tags=["auth"])

_BAD_LOGIN = "wrong e-mail or password"


def _invalid_grant(reason: str) -> HTTPException:
    return HTTPException(401, reason, headers={"WWW-Authenticate": "Bearer"})


async def _tokens(db: Db, state: UsersState, creds: auth_repo.Credentials, refresh: tuple[str, bytes]) -> TokenOut:
    principal = Principal(creds.user_id, creds.organisation_id, Role(creds.role))
    access = issue_access_token(principal, state.settings.signing_key, state.settings.access_token_ttl_s)
    return TokenOut(access_token=access.token, refresh_token=refresh[0], expires_in=access.expires_in)


@router.post("/token", response_model=TokenOut,
             responses={401: {"description": "wrong e-mail or password"},
                        429: {"description": "too many failed logins for this account or address; see Retry-After"}})
async def token(form: Annotated[OAuth2PasswordRequestForm, Depends()], request: Request, db: Db,
                state: State) -> TokenOut:
    """OAuth2 password flow: form fields `username` (the e-mail) and `password`."""
    s = state.settings
    email = normalise_email(form.username)
    if len(email) > MAX_EMAIL_LENGTH or len(form.password) > MAX_PASSWORD_LENGTH:
        raise HTTPException(422, "the e-mail or the password is longer than any registered one")
    account_key, address_key = f"account:{email}", f"address:{client_address(request, state)}"
    wait = await auth_repo.login_retry_after(
        db, {account_key: s.login_max_failures_per_account, address_key: s.login_max_failures_per_address},
        s.login_window_s)
    if wait is not None:
        raise HTTPException(429, f"too many failed logins; try again in {math.ceil(wait)} s",
                            headers={"Retry-After": str(math.ceil(wait))})
    creds = await auth_repo.credentials(db, email)
    ok, rehash = await verify_password(creds.password_hash if creds else None, form.password)
    if not ok or creds is None:
        await auth_repo.record_login_failure(db, [account_key, address_key], s.login_window_s)
        raise _invalid_grant(_BAD_LOGIN)
    if creds.disabled:
        raise _invalid_grant("this account is disabled")
    await auth_repo.clear_login_failures(db, account_key)
    if rehash:
        await auth_repo.update_password_hash(db, creds.user_id, await hash_password(form.password))
    refresh = new_refresh_token()
    await auth_tokens.start_family(db, refresh[1], creds.user_id, s.refresh_token_ttl_s)
    return await _tokens(db, state, creds, refresh)


@router.post("/refresh", response_model=TokenOut,
             responses={401: {"description": "unknown, expired, revoked or reused refresh token"}})
async def refresh(body: RefreshIn, db: Db, state: State) -> TokenOut:
    """A new access token and a new refresh token; the one sent is used up. Sending a used one again is
    taken as theft: every token of that login is revoked and the user must log in again."""
    new = new_refresh_token()
    ttl = state.settings.refresh_token_ttl_s
    result = await auth_tokens.rotate(db, refresh_digest(body.refresh_token), new[1], ttl)
    if result.outcome is auth_tokens.Rotation.REUSED:
        raise unauthorized("this refresh token was already used: every session of this login is revoked, "
                           "log in again")
    if result.outcome is not auth_tokens.Rotation.ROTATED or result.user_id is None:
        raise unauthorized("the refresh token is unknown or expired: log in again")
    creds = await auth_repo.principal_of(db, result.user_id)
    if creds is None or creds.disabled:
        await auth_tokens.revoke(db, new[1], "user disabled")
        raise unauthorized("this user no longer exists or is disabled")
    return await _tokens(db, state, creds, new)


@router.post("/logout", status_code=204, response_class=Response)
async def logout(body: RefreshIn, db: Db) -> Response:
    """Revokes the refresh token's login (its whole family). Access tokens already issued stay valid
    until they expire (minutes: they are verified locally). 204 also for an unknown token (RFC 7009 §2.2)."""
    await auth_tokens.revoke(db, refresh_digest(body.refresh_token), "logout")
    return Response(status_code=204)
