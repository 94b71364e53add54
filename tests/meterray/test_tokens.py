"""Access tokens: what a verifier accepts, and every forgery it refuses."""
from __future__ import annotations

import base64
import json
import time
import uuid

import jwt
import pytest

from meterray.identity import Principal, Role
from meterray.tokens import LEEWAY_S, TokenError, issue_access_token, verify_access_token

KEY = "k" * 48
WHO = Principal(uuid.uuid4(), uuid.uuid4(), Role.CUSTOMER)


def test_a_token_carries_user_organisation_and_role() -> None:
    issued = issue_access_token(WHO, KEY, 900)
    assert issued.expires_in == 900
    assert verify_access_token(issued.token, KEY) == WHO
    admin = Principal(uuid.uuid4(), None, Role.ADMIN)
    assert verify_access_token(issue_access_token(admin, KEY, 60).token, KEY) == admin


def test_expired_tokens_are_refused_after_the_leeway() -> None:
    old = issue_access_token(WHO, KEY, 60, now=time.time() - 120).token
    with pytest.raises(TokenError, match="expired"):
        verify_access_token(old, KEY)


def test_a_token_accepted_before_is_refused_once_it_expires() -> None:
    # Valid for about one more second past the leeway: accepted now, refused two seconds later (the
    # verifier remembers tokens it checked, never beyond their expiry).
    token = issue_access_token(WHO, KEY, 60 - LEEWAY_S + 2, now=time.time() - 60).token
    assert verify_access_token(token, KEY) == WHO
    assert verify_access_token(token, KEY) == WHO
    time.sleep(2.1)
    with pytest.raises(TokenError, match="expired"):
        verify_access_token(token, KEY)


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_tampered_foreign_and_unsigned_tokens_are_refused() -> None:
    token = issue_access_token(WHO, KEY, 900).token
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["role"] = "admin"
    forgeries = [
        f"{header}.{_b64(claims)}.{signature}",  # payload changed, signature kept
        issue_access_token(WHO, "another-key-" * 4, 900).token,  # signed with another key
        f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.",  # alg none
        jwt.encode({**claims, "typ": "refresh"}, KEY, algorithm="HS256"),  # not an access token
        jwt.encode({k: v for k, v in claims.items() if k != "exp"}, KEY, algorithm="HS256"),  # no expiry
        jwt.encode({**claims, "aud": "elsewhere"}, KEY, algorithm="HS256"),
        jwt.encode({**claims, "sub": "1 OR 1=1"}, KEY, algorithm="HS256"),
        jwt.encode(claims, KEY, algorithm="HS512"),  # algorithm not pinned
        "garbage", "",
    ]
    for forged in forgeries:
        with pytest.raises(TokenError):
            verify_access_token(forged, KEY)
