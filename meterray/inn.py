"""Russian taxpayer numbers (ИНН, ОГРН): the FNS check-digit algorithms, pure.

Weights and rules as in shared/reference/external_apis.md §1.10 (the standard FNS algorithm, checked
against its test vectors): a 10-digit INN (legal entity) has one check digit, a 12-digit INN
(individual, ИП) two. All-zero numbers pass the arithmetic and are refused explicitly.
"""
from __future__ import annotations

_W10 = (2, 4, 10, 3, 5, 9, 4, 6, 8)
_W11 = (7, 2, 4, 10, 3, 5, 9, 4, 6, 8)
_W12 = (3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8)


def _check_digit(digits: str, weights: tuple[int, ...]) -> int:
    return sum(int(c) * w for c, w in zip(digits[:len(weights)], weights, strict=True)) % 11 % 10


def inn_problem(inn: str) -> str | None:
    """Why `inn` is not a valid INN, or None when it is. Only ASCII digits count (`str.isdigit`
    accepts other scripts' digits too)."""
    if not (inn.isascii() and inn.isdigit()):
        return "an INN has digits only"
    if len(inn) not in (10, 12):
        return f"an INN has 10 digits (organisation) or 12 (individual entrepreneur), not {len(inn)}"
    if set(inn) == {"0"}:
        return "an INN cannot be all zeros"
    if len(inn) == 10:
        ok = _check_digit(inn, _W10) == int(inn[9])
    else:
        ok = _check_digit(inn, _W11) == int(inn[10]) and _check_digit(inn, _W12) == int(inn[11])
    return None if ok else "the INN's check digit is wrong: a typing error?"


def inn_is_valid(inn: str) -> bool:
    return inn_problem(inn) is None


def ogrn_is_valid(ogrn: str) -> bool:
    """13-digit OGRN: first 12 mod 11 mod 10; 15-digit OGRNIP: first 14 mod 13 mod 10 (§1.10)."""
    if not (ogrn.isascii() and ogrn.isdigit()):
        return False
    if len(ogrn) == 13:
        return int(ogrn[:12]) % 11 % 10 == int(ogrn[12])
    if len(ogrn) == 15:
        return int(ogrn[:14]) % 13 % 10 == int(ogrn[14])
    return False
