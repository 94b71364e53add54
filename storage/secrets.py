"""Secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`) with the key of the settings.

`METERRAY_SECRET_KEY` is any passphrase (its SHA-256 becomes the Fernet key); unset, a random key is
made once in `<var_dir>/secret.key` (mode 0600), which serves one machine. A cluster sets the
variable. Losing the key loses the stored secrets, nothing else: re-enter them.
"""
from __future__ import annotations

import base64
import hashlib
import os
import secrets
from functools import cache
from pathlib import Path

import orjson
from cryptography.fernet import Fernet, InvalidToken

from meterray.settings import Settings


class SecretKeyError(RuntimeError):
    """The stored secrets cannot be read with this key."""


def cipher(settings: Settings) -> Fernet:
    return _cipher(settings.secret_key.get_secret_value() or _key_file(settings.var_dir))


@cache
def _cipher(passphrase: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(passphrase.encode()).digest()))


def _key_file(var_dir: Path) -> str:
    path = var_dir / "secret.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
        except FileExistsError:  # another process made it first: use theirs
            pass
    return path.read_text().strip()


def seal(f: Fernet, values: dict[str, str]) -> bytes | None:
    return f.encrypt(orjson.dumps(values)) if values else None


def unseal(f: Fernet, token: bytes | None) -> dict[str, str]:
    if token is None:
        return {}
    try:
        out: dict[str, str] = orjson.loads(f.decrypt(bytes(token)))
        return out
    except InvalidToken:
        raise SecretKeyError("stored partner secrets cannot be decrypted with this METERRAY_SECRET_KEY "
                             "(the key changed?): store the partner's secrets again") from None
