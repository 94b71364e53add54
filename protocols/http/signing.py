"""Webhook signatures: HMAC-SHA256 of the raw body with the partner's secret, hex, in
`X-Meterray-Signature: sha256=<hex>` (the scheme GitHub's webhooks use); compared in constant time."""
from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Meterray-Signature"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str | None) -> bool:
    return signature is not None and hmac.compare_digest(sign(secret, body), signature.strip())
