"""Profiles are validated data: the shipped tables are sane and mistakes fail with useful messages."""
from __future__ import annotations

import pytest

from meterray.quantities import QUANTITIES
from protocols.modbus.profiles import (
    PROFILES,
    WB_CONTINUOUS_READ_MAX_HOLE,
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
    assert set(PROFILES) == {"sdm630", "wb-map3e", "wb-map3e-fw1"}
    for profile in PROFILES.values():
        assert profile.function_code == 4
        for f in profile.fields:
            assert f.quantity in QUANTITIES


def test_sdm630_table() -> None:
    p = PROFILES["sdm630"]
    # Protocol v1.8 §1.1: at most 40 values = 80 registers per request.
    assert (p.word_order, p.max_read_registers, p.max_hole, p.alignment) == ("big", 80, 0, 2)
    assert all(f.dtype is DType.F32 and f.scale == 1.0 and f.error_value is None for f in p.fields)
    assert p.field_for("1-0:32.7.0").address == 0x0000  # 30001 phase 1 line to neutral volts
    assert p.field_for("1-0:36.7.0").address == 0x000C  # 30013 phase 1 power (signed)
    assert p.field_for("1-0:16.7.0").address == 0x0034  # 30053 total system power (signed)
    assert p.field_for("1-0:137.7.0").address == 0x0038  # 30057 total system volt amps
    assert p.field_for("1-0:131.7.0").address == 0x003C  # 30061 total system VAr (signed)
    assert p.field_for("1-0:14.7.0").address == 0x0046  # 30071 frequency
    assert p.field_for("1-0:1.8.0").address == 0x0048  # 30073 import kWh
    assert max(f.end for f in p.fields) == 0x0050  # whole meter inside 0x0000..0x004F


# wirenboard/wb-mqtt-serial templates/config-map3e-fw2.json, channel by channel:
# (OBIS, template channel name, address, format, scale, word order, error_value)
WB_FW2_TEMPLATE = {
    ("1-0:13.7.0", "Total PF", 0x10BC, DType.S16, 0.001, None, None),
    ("1-0:14.7.0", "Frequency", 0x10F8, DType.U16, 0.01, None, None),
    ("1-0:1.8.0", "Total AP energy", 0x1200, DType.U64, 1e-5, "little", None),
    ("1-0:21.8.0", "AP energy L1", 0x1204, DType.U64, 1e-5, "little", None),
    ("1-0:41.8.0", "AP energy L2", 0x1208, DType.U64, 1e-5, "little", None),
    ("1-0:61.8.0", "AP energy L3", 0x120C, DType.U64, 1e-5, "little", None),
    ("1-0:2.8.0", "Total AN energy", 0x1210, DType.U64, 1e-5, "little", None),
    ("1-0:3.8.0", "Total RP energy", 0x1220, DType.U64, 1e-5, "little", None),
    ("1-0:4.8.0", "Total RN energy", 0x1230, DType.U64, 1e-5, "little", None),
    ("1-0:16.7.0", "Total P", 0x1300, DType.S32, 0.00512, None, None),
    ("1-0:36.7.0", "P L1", 0x1302, DType.S32, 0.00512, None, None),
    ("1-0:56.7.0", "P L2", 0x1304, DType.S32, 0.00512, None, None),
    ("1-0:76.7.0", "P L3", 0x1306, DType.S32, 0.00512, None, None),
    ("1-0:131.7.0", "Total Q", 0x1308, DType.S32, 0.00512, None, None),
    ("1-0:137.7.0", "Total S", 0x1310, DType.S32, 0.00512, None, None),
    ("1-0:32.7.0", "Urms L1", 0x1410, DType.U32, 1.52588e-7, None, 0xFFFFFFFF),
    ("1-0:52.7.0", "Urms L2", 0x1412, DType.U32, 1.52588e-7, None, 0xFFFFFFFF),
    ("1-0:72.7.0", "Urms L3", 0x1414, DType.U32, 1.52588e-7, None, 0xFFFFFFFF),
    ("1-0:31.7.0", "Irms L1", 0x1416, DType.U32, 2.44141e-7, None, None),
    ("1-0:51.7.0", "Irms L2", 0x1418, DType.U32, 2.44141e-7, None, None),
    ("1-0:71.7.0", "Irms L3", 0x141A, DType.U32, 2.44141e-7, None, None),
}

# templates/config-map3e.json (legacy firmware, group g-wb-old): no error values on these channels.
WB_FW1_TEMPLATE = {
    ("1-0:32.7.0", "Urms L1", 0x10D9, DType.U16, 0.01, None, None),
    ("1-0:52.7.0", "Urms L2", 0x10DA, DType.U16, 0.01, None, None),
    ("1-0:72.7.0", "Urms L3", 0x10DB, DType.U16, 0.01, None, None),
    ("1-0:31.7.0", "Irms L1", 0x10DD, DType.U16, 0.001, None, None),
    ("1-0:51.7.0", "Irms L2", 0x10DE, DType.U16, 0.001, None, None),
    ("1-0:71.7.0", "Irms L3", 0x10DF, DType.U16, 0.001, None, None),
    ("1-0:14.7.0", "Frequency", 0x10F8, DType.U16, 0.01, None, None),
    ("1-0:1.8.0", "Total AP energy", 0x1200, DType.U64, 3.125e-6, "little", None),
    ("1-0:21.8.0", "AP energy L1", 0x1204, DType.U64, 3.125e-6, "little", None),
    ("1-0:41.8.0", "AP energy L2", 0x1208, DType.U64, 3.125e-6, "little", None),
    ("1-0:61.8.0", "AP energy L3", 0x120C, DType.U64, 3.125e-6, "little", None),
    ("1-0:3.8.0", "Total RP energy", 0x1220, DType.U64, 3.125e-6, "little", None),
    ("1-0:16.7.0", "Total P", 0x1300, DType.S32, 0.00032, None, None),
    ("1-0:36.7.0", "P L1", 0x1302, DType.S32, 0.00032, None, None),
    ("1-0:56.7.0", "P L2", 0x1304, DType.S32, 0.00032, None, None),
    ("1-0:76.7.0", "P L3", 0x1306, DType.S32, 0.00032, None, None),
    ("1-0:131.7.0", "Total Q", 0x1308, DType.S32, 0.00032, None, None),
    ("1-0:137.7.0", "Total S", 0x1310, DType.S32, 0.00032, None, None),
}


@pytest.mark.parametrize(("name", "template"), [("wb-map3e", WB_FW2_TEMPLATE), ("wb-map3e-fw1", WB_FW1_TEMPLATE)])
def test_wb_map3e_profiles_follow_the_vendor_templates(name: str, template: set[tuple[object, ...]]) -> None:
    p = PROFILES[name]
    # Both templates: "max_read_registers": 60; default word order big_endian, u64 counters little_endian.
    assert (p.function_code, p.word_order, p.max_read_registers) == (4, "big", 60)
    actual = {(f.quantity, f.address, f.dtype, f.scale, f.word_order, f.error_value) for f in p.fields}
    assert actual == {(q, a, t, s, w, e) for q, _, a, t, s, w, e in template}


def test_wb_holes_stay_within_wb_mqtt_serial_continuous_read() -> None:
    for name in ("wb-map3e", "wb-map3e-fw1"):
        # 0: meterray does not switch on continuous read (holding register 114); never above 10.
        assert 0 <= PROFILES[name].max_hole <= WB_CONTINUOUS_READ_MAX_HOLE == 10


def test_signed_fields_never_use_all_ones_as_error_value() -> None:
    # A real -1 on a signed register is a value; Wiren Board's signed error values are 0x7FFF/0x7FFFFFFF.
    for profile in PROFILES.values():
        for f in profile.fields:
            if f.error_value is not None and f.dtype in (DType.S16, DType.S32):
                assert f.error_value in (0x7FFF, 0x7FFF_FFFF), (profile.name, f.quantity)


def test_powers_carry_signed_obis_codes() -> None:
    import_only = {"1-0:1.7.0", "1-0:21.7.0", "1-0:41.7.0", "1-0:61.7.0", "1-0:3.7.0", "1-0:9.7.0"}
    for profile in PROFILES.values():
        quantities = {f.quantity for f in profile.fields}
        assert not quantities & import_only, profile.name  # every Modbus power register here is signed
        assert {"1-0:16.7.0", "1-0:36.7.0", "1-0:56.7.0", "1-0:76.7.0", "1-0:131.7.0", "1-0:137.7.0"} <= quantities


def test_holes_are_the_addresses_outside_fields_and_readable_ranges() -> None:
    p = _profile(Field("1-0:1.8.0", 10, DType.U32), Field("1-0:2.8.0", 20, DType.U16), readable_ranges=((14, 18),))
    assert p.holes(10, 21) == [(12, 14), (18, 20)]
    assert p.holes(0, 10) == [(0, 10)]
    assert p.holes(14, 18) == []
    assert p.holes(11, 25) == [(12, 14), (18, 20), (21, 25)]


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
        ((Field("1-0:1.8.0", 0, DType.F32),), {"max_hole": -1}, "max_hole"),
        ((Field("1-0:1.8.0", 0, DType.F32),), {"max_hole": 125}, "max_hole"),
        ((Field("1-0:1.8.0", 1, DType.F32),), {"alignment": 2}, "not aligned"),
        ((Field("1-0:1.8.0", 0, DType.U16),), {"alignment": 2}, "not aligned"),
        ((Field("1-0:1.8.0", 0, DType.F32),), {"alignment": 3}, "alignment"),
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
