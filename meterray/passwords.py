"""Password policy, pure (hashing lives with the users service: serve_apps/users/security.py).

NIST SP 800-63B §5.1.1.2: at least 8 characters chosen by the user (we ask 10), accept at least 64
(we accept 128: argon2 hashes any length, the cap only bounds the work an attacker can send), every
printable character including spaces, no composition rules, but refuse values that are known to be
guessed first and values built from the account's own identifiers.
"""
from __future__ import annotations

MIN_LENGTH = 10
MAX_LENGTH = 128

# The head of every public breached-password list; a real deployment can add a larger corpus.
_COMMON = frozenset({
    "1234567890", "0123456789", "12345678910", "1234567890a", "qwertyuiop", "qwerty1234", "qwerty12345",
    "1q2w3e4r5t", "1q2w3e4r5t6y", "password1", "password12", "password123", "passw0rd12", "iloveyou12",
    "abcdefghij", "a1b2c3d4e5", "zaq12wsxcde", "йцукенгшщз", "1111111111", "0000000000", "9876543210",
    "adminadmin", "administrator", "letmein123", "welcome123", "changeme123", "qwertyuiop1",
})


def password_problems(password: str, *, email: str = "", inn: str = "") -> list[str]:
    """Every reason `password` is refused (empty when it is accepted)."""
    problems = []
    if len(password) < MIN_LENGTH:
        problems.append(f"a password has at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        problems.append(f"a password has at most {MAX_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        problems.append("a password has no control characters")
    lowered = password.lower()
    if lowered in _COMMON or len(set(password)) <= 2:
        problems.append("this password is among the first an attacker tries")
    local = email.split("@", 1)[0].lower()
    if (len(local) >= 4 and local in lowered) or (inn and inn in password):
        problems.append("a password must not contain the e-mail name or the INN")
    return problems
