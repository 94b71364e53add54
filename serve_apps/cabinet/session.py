"""The cabinet's session: the users service's own tokens, kept in cookies the page's scripts cannot read.

- `mr_at`: the access token (a JWT, verified locally like every API does), HttpOnly, SameSite=Strict,
  living as long as the token (METERRAY_ACCESS_TOKEN_TTL_S, 15 minutes).
- `mr_rt`: the refresh token, HttpOnly, SameSite=Strict, for METERRAY_REFRESH_TOKEN_TTL_S. When the
  access token has expired, the next page rotates the refresh token (the users service's rotation with
  reuse detection) and answers with a redirect to itself carrying the new cookies.
Both are `Secure` when the request came over HTTPS (directly or through a proxy saying so).

CSRF: SameSite=Strict keeps both cookies off every request another site starts, so a forged form post
arrives unauthenticated; every state-changing post is also refused unless its Origin (or, when a browser
sends none, its Referer) is this origin, which also stops login CSRF (logging a victim into the
attacker's account), which SameSite cannot (that post carries no cookie to begin with).
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Request, Response

from meterray.identity import Principal, Role
from meterray.tokens import TokenError, verify_access_token

ACCESS_COOKIE, REFRESH_COOKIE = "mr_at", "mr_rt"
LANG_COOKIE, TZ_COOKIE = "mr_lang", "mr_tz"


class LoginRequired(Exception):
    """No valid session: the page redirects to the login form (and comes back after it)."""

    def __init__(self, next_url: str, expired: bool = False) -> None:
        self.next_url, self.expired = next_url, expired


class Refreshed(Exception):
    """The access token was renewed: answer with a redirect to the same URL carrying the new cookies."""

    def __init__(self, url: str, access: str, access_ttl_s: int, refresh: str, refresh_ttl_s: int) -> None:
        self.url, self.access, self.access_ttl_s, self.refresh, self.refresh_ttl_s = (
            url, access, access_ttl_s, refresh, refresh_ttl_s)


@dataclass(frozen=True)
class Viewer:
    """Who is looking, and what they may see."""

    principal: Principal

    @property
    def everything(self) -> bool:
        # Platform staff (an admin of no organisation) see every device; everybody else their organisation's.
        return self.principal.role is Role.ADMIN and self.principal.organisation_id is None


def principal_from_cookie(request: Request, signing_key: str) -> Principal | None:
    token = request.cookies.get(ACCESS_COOKIE)
    if not token:
        return None
    try:
        return verify_access_token(token, signing_key)
    except TokenError:
        return None


def is_https(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"


def set_session(response: Response, request: Request, access: str, access_ttl_s: int, refresh: str,
                refresh_ttl_s: int) -> None:
    secure = is_https(request)
    response.set_cookie(ACCESS_COOKIE, access, max_age=access_ttl_s, path="/", httponly=True, samesite="strict",
                        secure=secure)
    response.set_cookie(REFRESH_COOKIE, refresh, max_age=refresh_ttl_s, path="/", httponly=True, samesite="strict",
                        secure=secure)


def clear_session(response: Response, request: Request) -> None:
    for name in (ACCESS_COOKIE, REFRESH_COOKIE):
        response.delete_cookie(name, path="/", httponly=True, samesite="strict", secure=is_https(request))


def same_origin(request: Request) -> bool:
    """True when the browser says this request was started by a page of this origin."""
    host = request.headers.get("host", "")
    if request.headers.get("sec-fetch-site") not in (None, "same-origin"):
        return False
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return False
    parts = urlsplit(source)
    scheme = "https" if is_https(request) else request.url.scheme
    return parts.scheme == scheme and parts.netloc == host


def safe_next(url: str | None) -> str:
    """Where to go after logging in: a path of this site only (no `//host`, no scheme): no open redirect."""
    if not url or not url.startswith("/") or url.startswith("//") or "\\" in url:
        return "/"
    return url
