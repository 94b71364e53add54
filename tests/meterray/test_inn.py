"""INN check digits against the test vectors of external_apis.md §1.10."""
from __future__ import annotations

import pytest

from meterray.inn import inn_problem, ogrn_is_valid

VALID = ["7707083893", "7736207543", "7728168971", "7830002293", "7701234560", "500100732259", "771234567859"]


@pytest.mark.parametrize("inn", VALID)
def test_valid_inns_pass(inn: str) -> None:
    assert inn_problem(inn) is None


@pytest.mark.parametrize(("inn", "why"), [
    ("7707083894", "check digit"), ("500100732258", "check digit"), ("1234567890", "check digit"),
    ("123456789012", "check digit"), ("0000000000", "all zeros"), ("000000000000", "all zeros"),
    ("770708389", "not 9"), ("77070838931", "not 11"), ("", "digits only"), ("7707O83893", "digits only"),
    ("７７０７０８３８９３", "digits only"),  # full-width digits: str.isdigit() would accept them
    ("7707083893' OR 1=1--", "digits only"),
])
def test_invalid_inns_say_why(inn: str, why: str) -> None:
    problem = inn_problem(inn)
    assert problem is not None and why in problem


def test_one_changed_digit_is_always_caught_in_a_10_digit_inn() -> None:
    # The check digit catches every single-digit typo of digits 1-9 whose weight is not 0 mod 11.
    for i in range(9):
        for d in "0123456789":
            if d != VALID[0][i]:
                typo = VALID[0][:i] + d + VALID[0][i + 1:]
                assert inn_problem(typo) is not None, typo


def test_ogrn_check_digits() -> None:
    assert ogrn_is_valid("1027700132195") and ogrn_is_valid("304770000000008")
    assert not ogrn_is_valid("1027700132196") and not ogrn_is_valid("304770000000009") and not ogrn_is_valid("12")
