"""The vocabulary: every code is well formed, and power codes follow the documented sign convention."""
from __future__ import annotations

import re

import pytest

from meterray.quantities import QUANTITIES, Kind, quantity


def test_codes_are_electricity_obis_codes_with_known_units() -> None:
    for code, q in QUANTITIES.items():
        assert re.fullmatch(r"1-0:\d{1,3}\.\d{1,3}\.\d{1,3}", code), code
        assert q.obis == code
        assert q.unit in {"kWh", "kvarh", "W", "var", "VA", "V", "A", "Hz", ""}
        assert (q.kind is Kind.CUMULATIVE) == code.split(".")[1].startswith("8")  # D = 8: energy registers


@pytest.mark.parametrize(("signed", "import_only"), [
    # Blue Book: 16.7.0 = abs(QI+QIV) - abs(QII+QIII), per phase +20/+40/+60.
    ("1-0:16.7.0", "1-0:1.7.0"), ("1-0:36.7.0", "1-0:21.7.0"), ("1-0:56.7.0", "1-0:41.7.0"),
    ("1-0:76.7.0", "1-0:61.7.0"),
])
def test_signed_active_power_is_distinct_from_import_only(signed: str, import_only: str) -> None:
    assert "signed" in quantity(signed).name and quantity(signed).unit == "W"
    assert ">= 0" in quantity(import_only).name


@pytest.mark.parametrize("c", [3, 23, 43, 63, 9, 29, 49, 69])
def test_all_quadrant_codes_are_128_plus_the_standard_plus_code(c: int) -> None:
    # meterray convention (module doc): manufacturer-specific C = 128 + C of the "+" quantity.
    all_quadrants = quantity(f"1-0:{128 + c}.7.0")
    assert 128 <= 128 + c <= 199  # the Blue Book's manufacturer-specific range of value group C
    assert all_quadrants.unit == ("var" if c % 10 == 3 else "VA")


def test_unknown_code_names_itself() -> None:
    with pytest.raises(KeyError, match="1-0:99.9.9"):
        quantity("1-0:99.9.9")
