"""Access-token verification for every Serve application: local (meterray.tokens, no lookup), so an app
only needs the signing key. Use `CurrentPrincipal` in a route's signature; `/docs` then shows the
Authorize button, which logs in through the users service's OAuth2 password flow.

    from serve_apps.auth import CurrentPrincipal, configure_auth   # configure_auth(settings) per replica
    @router.get("/things")
    async def things(who: CurrentPrincipal, db: Db) -> ...:        # who.organisation_id, who.role

What a principal may do, and over which organisations, is meterray.access; a route takes the scope of its
action (`scope: DevicesScope`, 403 when the role does not allow it) and passes `scope.organisation_id`
(None: every organisation) into its storage query's WHERE clause.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import OAuth2PasswordBearer

from meterray.access import Action, Forbidden, Scope, scope
from meterray.identity import Principal, Role
from meterray.settings import Settings
from meterray.tokens import TokenError, verify_access_token

TOKEN_URL = "/api/v1/auth/token"  # absolute: the Authorize button of any app's /docs logs in here

oauth2_scheme = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=True)

# Per replica, like serve_apps.deps: Serve ships the FastAPI app by value, so this is set in the replica.
_key: str | None = None


def configure_auth(settings: Settings) -> None:
    global _key
    _key = settings.signing_key


def unauthorized(reason: str) -> HTTPException:
    # RFC 6750 §3: a refused bearer token is answered 401 with a WWW-Authenticate challenge.
    return HTTPException(401, reason, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


async def current_principal(token: Annotated[str, Depends(oauth2_scheme)]) -> Principal:
    if _key is None:
        raise RuntimeError("configure_auth() was not called in this replica")
    try:
        return verify_access_token(token, _key)
    except TokenError as err:
        raise unauthorized(err.reason) from None


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_role(*roles: Role) -> object:
    """A dependency refusing (403) principals without one of `roles`: `Depends(require_role(Role.ADMIN))`."""
    async def check(who: CurrentPrincipal) -> Principal:
        if who.role not in roles:
            raise HTTPException(403, f"needs the role {' or '.join(r.value for r in roles)}")
        return who
    return Depends(check)


def scope_of(who: Principal, action: Action) -> Scope:
    """The caller's scope for `action` (meterray.access), or 403 when its role does not allow the action."""
    try:
        return scope(who, action)
    except Forbidden as err:
        raise HTTPException(403, err.reason) from None


def allowed(action: Action) -> object:
    """A dependency giving the caller's Scope for `action` (401 without a valid token, 403 without the role):
    `scope: Annotated[Scope, allowed(Action.READ_DEVICES)]`, then pass `scope.organisation_id` to the query."""
    async def check(who: CurrentPrincipal) -> Scope:
        return scope_of(who, action)
    return Depends(check)


DevicesScope = Annotated[Scope, allowed(Action.READ_DEVICES)]
RuntimeScope = Annotated[Scope, allowed(Action.READ_RUNTIME)]
PartnersScope = Annotated[Scope, allowed(Action.MANAGE_PARTNERS)]
UsersScope = Annotated[Scope, allowed(Action.MANAGE_USERS)]
