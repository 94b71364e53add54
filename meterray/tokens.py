"""Access tokens: short-lived JWTs (RFC 7519) signed with HS256, issued by the users service and verified
locally by every Serve application (no database, no call to the users service). Pure.

Claims: `sub` user id, `org` organisation id (null for platform admins), `role`, `iat`, `exp`, `iss`,
`aud`, `typ`=`access`. Verification pins the algorithm (RFC 8725 §3.1: never trust the header's `alg`,
so `none` and key-confusion tokens are refused), requires every claim and checks expiry with a small
leeway for clock skew between replicas.
"""
from __future__ import annotations

import functools
import secrets
import time
import uuid
from dataclasses import dataclass

import jwt

from meterray.identity import Principal, Role

ALGORITHM = "HS256"
ISSUER = "meterray"
AUDIENCE = "meterray-api"
LEEWAY_S = 10  # clock skew between the replica that signs and the one that verifies
_REQUIRED = ["sub", "role", "iat", "exp", "iss", "aud", "typ"]


class TokenError(Exception):
    """The token is not accepted; `reason` is safe to show (it never quotes the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_in: int  # seconds


def issue_access_token(principal: Principal, key: str, ttl_s: int, *, now: float | None = None) -> IssuedToken:
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": str(principal.user_id),
        "org": None if principal.organisation_id is None else str(principal.organisation_id),
        "role": principal.role.value,
        "iat": issued,
        "exp": issued + ttl_s,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "typ": "access",
        "jti": secrets.token_urlsafe(9),
    }
    return IssuedToken(jwt.encode(claims, key, algorithm=ALGORITHM), ttl_s)


def verify_access_token(token: str, key: str) -> Principal:
    principal, expires = _verified(token, key)
    if expires <= time.time() - LEEWAY_S:  # PyJWT's own rule, checked on every use
        raise TokenError("the access token has expired: refresh it")
    return principal


@functools.lru_cache(maxsize=4096)
def _verified(token: str, key: str) -> tuple[Principal, int]:
    """The token's principal and expiry, its signature and claims checked once: a session sends the same
    token with every request for its lifetime, and decoding it was a fifth of a replica's CPU per
    request. Only tokens that pass are kept; expiry is not a property of the token but of the time."""
    try:
        claims = jwt.decode(token, key, algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER,
                            leeway=LEEWAY_S, options={"require": _REQUIRED, "verify_exp": False})
    except jwt.InvalidTokenError:
        raise TokenError("the access token is not valid") from None
    if claims.get("typ") != "access":
        raise TokenError("not an access token")
    try:
        org = claims.get("org")
        principal = Principal(uuid.UUID(claims["sub"]), None if org is None else uuid.UUID(org), Role(claims["role"]))
        expires = claims["exp"]
        if not isinstance(expires, int) or isinstance(expires, bool):
            raise TypeError("exp is not an integer")
    except (ValueError, TypeError, AttributeError):
        raise TokenError("the access token is not valid") from None
    return principal, expires
