"""Profiles are validated data: the shipped tables are sane and mistakes fail with useful messages."""
from __future__ import annotations

import pytest

from meterray.quantities import QUANTITIES
from protocols.modbus.profiles import (
    PROFILES,
    DType,
    Field,
    Profile,
    address_to_eastron_number,
    eastron_number_to_address,
)


def _profile(*fields: Field, **kw: object) -> Profile:
    args: dict[str, object] = {"name": "t", "function_code": 4, "word_order": "big", "max_read_registers": 125}
    args.update(kw)
    return Profile(fields=fields, **args)  # type: ignore[arg-type]


def test_shipped_profiles_use_the_vocabulary() -> None:
    assert set(PROFILES) == {"sdm630", "wb-map3e"}
    for profile in PROFILES.values():
        assert profile.function_code == 4
        for f in profile.fields:
            assert f.quantity in QUANTITIES


def test_sdm630_table() -> None:
    p = PROFILES["sdm630"]
    assert (p.word_order, p.max_read_registers) == ("big", 125)
    assert all(f.dtype is DType.F32 and f.scale == 1.0 for f in p.fields)
    assert p.field_for("1-0:32.7.0").address == 0x0000
    assert p.field_for("1-0:1.7.0").address == 0x0034
    assert p.field_for("1-0:14.7.0").address == 0x0046
    assert p.field_for("1-0:1.8.0").address == 0x0048
    assert max(f.end for f in p.fields) == 0x0050  # whole meter inside 0x0000..0x004F


def test_wb_map3e_table() -> None:
    p = PROFILES["wb-map3e"]
    assert (p.word_order, p.max_read_registers) == ("little", 60)
    urms = p.field_for("1-0:32.7.0")
    assert (urms.address, urms.dtype, urms.scale, urms.error_value) == (0x10D9, DType.U16, 0.01, 0xFFFF)
    energy = p.field_for("1-0:1.8.0")
    assert (energy.address, energy.dtype, energy.scale) == (0x1200, DType.U64, 3.125e-6)
    assert energy.error_value == 0xFFFF_FFFF_FFFF_FFFF and energy.word_order is None  # profile's "little"
    power = p.field_for("1-0:1.7.0")
    assert (power.address, power.dtype, power.error_value, power.word_order) == (0x1300, DType.S32, 0xFFFFFFFF, "big")
    assert p.field_for("1-0:13.7.0").address == 0x10BC  # total PF, just before PF L1..L3 at 0x10BD..


def test_profiles_hash_and_compare_by_content() -> None:
    a = _profile(Field("1-0:1.8.0", 0, DType.F32))
    b = _profile(Field("1-0:1.8.0", 0, DType.F32))
    assert a == b and hash(a) == hash(b)
    assert a != _profile(Field("1-0:1.8.0", 2, DType.F32))


@pytest.mark.parametrize(
    ("fields", "kw", "message"),
    [
        ((Field("1-0:1.8.0", 0, DType.F32), Field("1-0:2.8.0", 1, DType.F32)), {}, "overlaps"),
        ((Field("1-0:1.8.0", 0, DType.F32), Field("1-0:1.8.0", 4, DType.F32)), {}, "mapped twice"),
        ((), {}, "no fields"),
        ((Field("1-0:1.8.0", 0, DType.F32),), {"function_code": 6}, "function_code"),
        ((Field("1-0:1.8.0", 0, DType.F32),), {"word_order": "middle"}, "word_order"),
        ((Field("1-0:1.8.0", 0, DType.F32),), {"max_read_registers": 126}, "max_read_registers"),
        ((Field("1-0:1.8.0", 0, DType.U64),), {"max_read_registers": 3}, "needs 4 registers"),
        ((Field("1-0:1.8.0", 0, DType.F32),), {"readable_ranges": ((5, 5),)}, "readable range"),
    ],
)
def test_profile_rejects_inconsistent_tables(fields: tuple[Field, ...], kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _profile(*fields, **kw)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantity": "1-0:99.9.9", "address": 0, "dtype": DType.U16}, "unknown OBIS"),
        ({"quantity": "1-0:1.8.0", "address": 30001, "dtype": DType.U16}, None),  # legal address, just unusual
        ({"quantity": "1-0:1.8.0", "address": 0xFFFF, "dtype": DType.U32}, "outside the Modbus address range"),
        ({"quantity": "1-0:1.8.0", "address": -1, "dtype": DType.U16}, "outside the Modbus address range"),
        ({"quantity": "1-0:1.8.0", "address": 0, "dtype": DType.U16, "scale": 0.0}, "scale"),
        ({"quantity": "1-0:1.8.0", "address": 0, "dtype": DType.U16, "error_value": 0x10000}, "does not fit"),
        ({"quantity": "1-0:1.8.0", "address": 0, "dtype": DType.F32, "error_value": 0}, "float32"),
        ({"quantity": "1-0:1.8.0", "address": 0, "dtype": DType.U16, "word_order": "little"}, "multi-register"),
    ],
)
def test_field_validation(kwargs: dict[str, object], message: str | None) -> None:
    if message is None:
        Field(**kwargs)  # type: ignore[arg-type]
        return
    with pytest.raises(ValueError, match=message):
        Field(**kwargs)  # type: ignore[arg-type]


def test_field_accepts_dtype_names() -> None:
    assert Field("1-0:1.8.0", 0, "u64").dtype is DType.U64  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (30001, (4, 0x0000)),  # SDM630 "Phase 1 line to neutral volts"
        (30053, (4, 0x0034)),  # total system power
        (30073, (4, 0x0048)),  # import active energy
        (30343, (4, 0x0156)),  # total kWh
        (40001, (3, 0x0000)),  # holding: demand time
        (40021, (3, 0x0014)),  # holding: Modbus node address
    ],
)
def test_eastron_register_numbers_both_ways(number: int, expected: tuple[int, int]) -> None:
    assert eastron_number_to_address(number) == expected
    fc, address = expected
    assert address_to_eastron_number(address, fc) == number


@pytest.mark.parametrize("number", [0, 1, 30000, 50001, 300001])
def test_eastron_rejects_non_register_numbers(number: int) -> None:
    with pytest.raises(ValueError, match="Eastron register number"):
        eastron_number_to_address(number)


def test_eastron_inverse_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        address_to_eastron_number(0xFC00)  # serial number lives beyond the 5-digit numbering
    with pytest.raises(ValueError):
        address_to_eastron_number(0, function_code=16)
