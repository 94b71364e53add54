"""Codec against raw register words as the meters put them on the wire.

Each fixture lists the words a real meter would answer for a block read, commented with the
address, the raw value and the value we expect out.
"""
from __future__ import annotations

import math
from dataclasses import replace

import pytest

from protocols.modbus.codec import NoValue, UndecodableAnswerError, decode_block, encode_block, encode_field
from protocols.modbus.planner import Block, plan_blocks
from protocols.modbus.profiles import PROFILES, DType, Field

SDM = PROFILES["sdm630"]
WB = PROFILES["wb-map3e"]
WB_FW1 = PROFILES["wb-map3e-fw1"]


def _sdm_words() -> list[int]:
    """SDM630 answer to FC04 0x0000+80: float32, high word first (ABCD)."""
    w = [0] * 80  # registers no field maps (per-phase VA, angles, ...) read as 0 here
    w[0x00:0x02] = [0x4366, 0x0000]  # 0x0000 V L1 = 230.0
    w[0x02:0x04] = [0x4367, 0x8000]  # 0x0002 V L2 = 231.5
    w[0x04:0x06] = [0x4365, 0xCCCD]  # 0x0004 V L3 = 229.8 (nearest float32: 229.8000030517578)
    w[0x06:0x08] = [0x4124, 0x0000]  # 0x0006 I L1 = 10.25 A
    w[0x08:0x0A] = [0x4118, 0x0000]  # 0x0008 I L2 = 9.5 A
    w[0x0A:0x0C] = [0x4100, 0x0000]  # 0x000A I L3 = 8.0 A
    w[0x0C:0x0E] = [0x4513, 0x5800]  # 0x000C P L1 = 2357.5 W
    w[0x0E:0x10] = [0xC2F0, 0x0000]  # 0x000E P L2 = -120.0 W (exporting phase: signed code 56.7.0)
    w[0x10:0x12] = [0x44E6, 0x0000]  # 0x0010 P L3 = 1840.0 W
    w[0x34:0x36] = [0x457E, 0xD800]  # 0x0034 P total = 4077.5 W
    w[0x38:0x3A] = [0x4586, 0x6000]  # 0x0038 S total = 4300.0 VA
    w[0x3C:0x3E] = [0x44BB, 0x8000]  # 0x003C Q total = 1500.0 var
    w[0x3E:0x40] = [0x3F73, 0x3333]  # 0x003E PF = 0.95 (0.949999988079071)
    w[0x46:0x48] = [0x4248, 0x0000]  # 0x0046 f = 50.0 Hz
    w[0x48:0x4A] = [0x4640, 0xE6B6]  # 0x0048 A+ = 12345.678 kWh (12345.677734375)
    w[0x4A:0x4C] = [0x4060, 0x0000]  # 0x004A A- = 3.5 kWh
    w[0x4C:0x4E] = [0x450A, 0x2400]  # 0x004C R+ = 2210.25 kvarh
    w[0x4E:0x50] = [0x4120, 0x0000]  # 0x004E R- = 10.0 kvarh
    return w


SDM_EXPECTED = {
    "1-0:32.7.0": (230.0, "V"), "1-0:52.7.0": (231.5, "V"), "1-0:72.7.0": (229.8000030517578, "V"),
    "1-0:31.7.0": (10.25, "A"), "1-0:51.7.0": (9.5, "A"), "1-0:71.7.0": (8.0, "A"),
    "1-0:36.7.0": (2357.5, "W"), "1-0:56.7.0": (-120.0, "W"), "1-0:76.7.0": (1840.0, "W"),
    "1-0:16.7.0": (4077.5, "W"), "1-0:137.7.0": (4300.0, "VA"), "1-0:131.7.0": (1500.0, "var"),
    "1-0:13.7.0": (0.949999988079071, ""), "1-0:14.7.0": (50.0, "Hz"),
    "1-0:1.8.0": (12345.677734375, "kWh"), "1-0:2.8.0": (3.5, "kWh"),
    "1-0:3.8.0": (2210.25, "kvarh"), "1-0:4.8.0": (10.0, "kvarh"),
}

# WB-MAP3E fw2 answers, one per planned block (see test_planner.test_wb_map3e_fw2_blocks).
# Scales and word orders: templates/config-map3e-fw2.json.
WB_WORDS = [
    [0x03A2],  # 0x10BC Total PF s16 ×0.001: 930 → 0.930
    [0x138A],  # 0x10F8 Frequency u16 ×0.01: 5002 → 50.02 Hz
    [
        0xF200, 0x2A05, 0x0001, 0x0000,  # 0x1200 AP total u64 LOW word first ×1e-5: 0x1_2A05_F200 = 5e9 → 50000 kWh
        0x1000, 0x5F5E, 0x0000, 0x0000,  # 0x1204 AP L1: 0x5F5E_1000 = 1.6e9 → 16000 kWh
        0xF100, 0x6553, 0x0000, 0x0000,  # 0x1208 AP L2: 0x6553_F100 = 1.7e9 → 17000 kWh
        0xF100, 0x6553, 0x0000, 0x0000,  # 0x120C AP L3: 17000 kWh
        0x5730, 0x0005, 0x0000, 0x0000,  # 0x1210 AN total: 0x5_5730 = 350000 → 3.5 kWh
        *[0x0000] * 12,  # 0x1214..0x121F AN L1..L3: template channels, not mapped, read through
        0x92E8, 0x0D2C, 0x0000, 0x0000,  # 0x1220 RP total: 0xD2C_92E8 = 221025000 → 2210.25 kvarh
        *[0x0000] * 12,  # 0x1224..0x122F RP L1..L3, not mapped
        0x4240, 0x000F, 0x0000, 0x0000,  # 0x1230 RN total: 0xF_4240 = 1e6 → 10.0 kvarh
    ],
    [
        0x0009, 0x27C0,  # 0x1300 Total P s32 HIGH word first ×0.00512: 600000 → 3072.0 W
        0x0003, 0xD090,  # 0x1302 P L1: 250000 → 1280.0 W
        0x0005, 0xA550,  # 0x1304 P L2: 370000 → 1894.4 W
        0xFFFF, 0xB1E0,  # 0x1306 P L3: -20000 → -102.4 W (exporting phase, two's complement)
        0x0004, 0x45C0,  # 0x1308 Total Q: 280000 → 1433.6 var
        0x0000, 0x0000, 0x0000, 0x0000, 0x0000, 0x0000,  # 0x130A..0x130F Q L1..L3, not mapped
        0x000A, 0x1220,  # 0x1310 Total S: 660000 → 3379.2 VA
    ],
    [
        0x59D8, 0x0000,  # 0x1410 Urms L1 u32 high word first ×1.52588e-7: 1507328000 → 230.000164864 V
        0x59A6, 0x0000,  # 0x1412 Urms L2: 1504051200 → 229.5001645056 V
        0x5A41, 0x0000,  # 0x1414 Urms L3: 1514209280 → 231.05016561664 V
        0x0280, 0xA000,  # 0x1416 Irms L1 u32 ×2.44141e-7: 41984000 → 10.250015744 A
        0x0251, 0xC000,  # 0x1418 Irms L2: 38912000 → 9.500014592 A
        0x01F4, 0x0000,  # 0x141A Irms L3: 32768000 → 8.000012288 A
    ],
]

WB_EXPECTED = {
    "1-0:13.7.0": (0.93, ""), "1-0:14.7.0": (50.02, "Hz"),
    "1-0:1.8.0": (50000.0, "kWh"), "1-0:21.8.0": (16000.0, "kWh"), "1-0:41.8.0": (17000.0, "kWh"),
    "1-0:61.8.0": (17000.0, "kWh"), "1-0:2.8.0": (3.5, "kWh"), "1-0:3.8.0": (2210.25, "kvarh"),
    "1-0:4.8.0": (10.0, "kvarh"),
    "1-0:16.7.0": (3072.0, "W"), "1-0:36.7.0": (1280.0, "W"), "1-0:56.7.0": (1894.4, "W"),
    "1-0:76.7.0": (-102.4, "W"), "1-0:131.7.0": (1433.6, "var"), "1-0:137.7.0": (3379.2, "VA"),
    "1-0:32.7.0": (230.000164864, "V"), "1-0:52.7.0": (229.5001645056, "V"), "1-0:72.7.0": (231.05016561664, "V"),
    "1-0:31.7.0": (10.250015744, "A"), "1-0:51.7.0": (9.500014592, "A"), "1-0:71.7.0": (8.000012288, "A"),
}

# The legacy firmware's answers (templates/config-map3e.json), one per planned block.
WB_FW1_WORDS = [
    [0x59D8, 0x59A6, 0x5A41],  # 0x10D9..DB Urms u16 ×0.01: 23000, 22950, 23105 → 230.00, 229.50, 231.05 V
    [0x280A, 0x251C, 0x1F40],  # 0x10DD..DF Irms u16 ×0.001: 10250, 9500, 8000 → 10.25, 9.5, 8.0 A
    [0x138A],  # 0x10F8 Frequency u16 ×0.01: 5002 → 50.02 Hz
    [
        0xA000, 0xB9AC, 0x0003, 0x0000,  # 0x1200 AP total u64 LOW word first ×3.125e-6: 16e9 → 50000 kWh
        0xE080, 0x4E7D, 0x0000, 0x0000,  # 0x1204 AP L1: 0x4E7D_E080 = 1316872320 → 4115.226 kWh
        0xE080, 0x4E7D, 0x0000, 0x0000,  # 0x1208 AP L2
        0xE080, 0x4E7D, 0x0000, 0x0000,  # 0x120C AP L3
    ],
    [0x3C80, 0x2A28, 0x0000, 0x0000],  # 0x1220 RP total: 707280000 → 2210.25 kvarh
    [
        0x008F, 0x0D18,  # 0x1300 Total P s32 high word first ×0.00032: 9375000 → 3000 W
        0x0039, 0x3870,  # 0x1302 P L1: 3750000 → 1200 W
        0x005A, 0x995C,  # 0x1304 P L2: 5937500 → 1900 W
        0xFFFB, 0x3B4C,  # 0x1306 P L3: -312500 → -100 W
        0x0045, 0x2432,  # 0x1308 Total Q: 4531250 → 1450 var
        0x0000, 0x0000, 0x0000, 0x0000, 0x0000, 0x0000,  # 0x130A..0x130F Q L1..L3, not mapped
        0x009D, 0x5B34,  # 0x1310 Total S: 10312500 → 3300 VA
    ],
]

WB_FW1_EXPECTED = {
    "1-0:32.7.0": (230.0, "V"), "1-0:52.7.0": (229.5, "V"), "1-0:72.7.0": (231.05, "V"),
    "1-0:31.7.0": (10.25, "A"), "1-0:51.7.0": (9.5, "A"), "1-0:71.7.0": (8.0, "A"), "1-0:14.7.0": (50.02, "Hz"),
    "1-0:1.8.0": (50000.0, "kWh"), "1-0:21.8.0": (4115.226, "kWh"), "1-0:41.8.0": (4115.226, "kWh"),
    "1-0:61.8.0": (4115.226, "kWh"), "1-0:3.8.0": (2210.25, "kvarh"),
    "1-0:16.7.0": (3000.0, "W"), "1-0:36.7.0": (1200.0, "W"), "1-0:56.7.0": (1900.0, "W"),
    "1-0:76.7.0": (-100.0, "W"), "1-0:131.7.0": (1450.0, "var"), "1-0:137.7.0": (3300.0, "VA"),
}


def test_sdm630_block_decodes() -> None:
    (block,) = plan_blocks(SDM)
    values, missing = decode_block(block, _sdm_words(), SDM.word_order)
    assert missing == []
    assert {v.quantity: (v.value, v.unit) for v in values} == SDM_EXPECTED
    assert all(v.quality == 0 for v in values)


@pytest.mark.parametrize(("profile", "answers", "expected"),
                         [(WB, WB_WORDS, WB_EXPECTED), (WB_FW1, WB_FW1_WORDS, WB_FW1_EXPECTED)], ids=["fw2", "fw1"])
def test_wb_map3e_blocks_decode(profile: object, answers: list[list[int]], expected: dict) -> None:
    blocks = plan_blocks(profile)  # type: ignore[arg-type]
    assert [b.count for b in blocks] == [len(w) for w in answers]
    decoded = {}
    for block, words in zip(blocks, answers, strict=True):
        values, missing = decode_block(block, words, profile.word_order)  # type: ignore[attr-defined]
        assert missing == []
        decoded.update({v.quantity: (v.value, v.unit) for v in values})
    assert decoded.keys() == expected.keys()
    for quantity, (value, unit) in expected.items():
        assert decoded[quantity][0] == pytest.approx(value, rel=1e-9), quantity
        assert decoded[quantity][1] == unit


def test_wrong_word_order_would_be_caught_by_the_fixture() -> None:
    # Decoding the u64 counters high word first gives an absurd number: the fixture pins the order.
    block = plan_blocks(WB)[2]
    high_first = Block(4, block.start, block.count, tuple(replace(f, word_order="big") for f in block.fields))
    values, _ = decode_block(high_first, WB_WORDS[2], "big")
    assert values[0].value > 1e9
    # And the u32 Urms low word first would read 0x0000_59D8 ×1.52588e-7: 3.5 mV, not 230 V.
    urms_little = Block(4, 0x1410, 2, (Field("1-0:32.7.0", 0x1410, DType.U32, 1.52588e-7, word_order="little"),))
    assert decode_block(urms_little, WB_WORDS[4][:2], "big")[0][0].value < 0.01


def test_fw2_words_read_with_the_fw1_scale_are_16_times_off() -> None:
    # Why the generations must not be mixed: the same s32 power register, ×0.00032 instead of ×0.00512.
    fw1_power = plan_blocks(WB_FW1)[5]
    values, _ = decode_block(fw1_power, WB_WORDS[3], "big")
    assert values[0].quantity == "1-0:16.7.0" and values[0].value == pytest.approx(3072.0 / 16)


def test_nan_and_inf_are_no_values_not_values() -> None:
    (block,) = plan_blocks(SDM)
    words = _sdm_words()
    words[0x00:0x02] = [0x7FC0, 0x0000]  # 0x0000 V L1: quiet NaN
    words[0x46:0x48] = [0x7F80, 0x0000]  # 0x0046 f: +inf
    values, missing = decode_block(block, words, "big")
    assert [(m.quantity, m.address, m.raw_words) for m in missing] == [
        ("1-0:32.7.0", 0x00, (0x7FC0, 0x0000)),
        ("1-0:14.7.0", 0x46, (0x7F80, 0x0000)),
    ]
    assert all(isinstance(m, NoValue) for m in missing)
    assert "not a finite number" in missing[0].reason
    assert len(values) == len(SDM.fields) - 2


def test_declared_error_value_is_a_no_value() -> None:
    block = plan_blocks(WB)[4]
    words = list(WB_WORDS[4])
    words[2:4] = [0xFFFF, 0xFFFF]  # 0x1412 Urms L2: 0xFFFFFFFF, the template's "error_value"
    values, missing = decode_block(block, words, "big")
    assert [(m.quantity, m.address, m.reason) for m in missing] == [
        ("1-0:52.7.0", 0x1412, "meter reported its error value 0xFFFFFFFF")]
    assert len(values) == 5


def test_all_ones_on_fields_without_an_error_value_are_values() -> None:
    # Irms declares no error value: 0xFFFFFFFF is 4294967295 × 2.44141e-7 A, a (huge) value.
    block = plan_blocks(WB)[4]
    words = list(WB_WORDS[4])
    words[6:8] = [0xFFFF, 0xFFFF]  # 0x1416 Irms L1
    values, missing = decode_block(block, words, "big")
    assert missing == []
    assert {v.quantity: v.value for v in values}["1-0:31.7.0"] == pytest.approx(1048.577610368595)
    # u64 energies declare none either: all ones is a value, not a no-value.
    values, missing = decode_block(plan_blocks(WB)[2], [0xFFFF] * 52, "big")
    assert missing == [] and len(values) == 7


@pytest.mark.parametrize(
    ("field", "words", "expected"),
    [
        (Field("1-0:16.7.0", 0x1300, DType.S32, 0.00512), [0xFFFF, 0xFFFF], -0.00512),  # 0x1300 P: -1 → -5.12 mW
        (Field("1-0:13.7.0", 0x10BC, DType.S16, 0.001), [0xFFFF], -0.001),  # 0x10BC PF: -1 → -0.001
        (Field("1-0:16.7.0", 0x1300, DType.S32, 0.00512), [0x7FFF, 0xFFFF], 10995116.27264),  # no error declared
    ],
)
def test_minus_one_on_signed_fields_is_a_value(field: Field, words: list[int], expected: float) -> None:
    values, missing = decode_block(Block(4, field.address, field.words, (field,)), words, "big")
    assert missing == [] and values[0].value == pytest.approx(expected)


@pytest.mark.parametrize(
    ("field", "words", "is_value"),
    [
        # WB signs "no value" with the maximum: "Voltage angle L1" s16 0x7FFF, "Upeak L1" s32 0x7FFFFFFF (fw2 template).
        (Field("1-0:13.7.0", 0, DType.S16, 0.1, 0x7FFF), [0x7FFF], False),
        (Field("1-0:13.7.0", 0, DType.S16, 0.1, 0x7FFF), [0xFFFF], True),  # -1 → -0.1
        (Field("1-0:16.7.0", 0, DType.S32, 0.01, 0x7FFF_FFFF, "little"), [0xFFFF, 0x7FFF], False),
        (Field("1-0:16.7.0", 0, DType.S32, 0.01, 0x7FFF_FFFF, "little"), [0xFFFF, 0xFFFF], True),  # -1 → -0.01
    ],
)
def test_signed_error_values_are_the_maximum_not_minus_one(field: Field, words: list[int], is_value: bool) -> None:
    values, missing = decode_block(Block(4, 0, field.words, (field,)), words, "big")
    assert (len(values), len(missing)) == ((1, 0) if is_value else (0, 1))


def test_pf_s16_negative_is_a_value() -> None:
    (pf_block,) = [b for b in plan_blocks(WB) if b.start == 0x10BC]
    values, missing = decode_block(pf_block, [0xFC7C], "big")  # 0x10BC: -900 → -0.9 (leading PF)
    assert missing == [] and values[0].value == pytest.approx(-0.9)


@pytest.mark.parametrize("count", [0, 79, 81])
def test_wrong_register_count_is_undecodable(count: int) -> None:
    (block,) = plan_blocks(SDM)
    with pytest.raises(UndecodableAnswerError) as err:
        decode_block(block, [7] * count, "big")
    assert err.value.reason == f"expected 80 registers from 0x0000, got {count}"
    assert err.value.address == 0 and err.value.raw_words == (7,) * count


def test_out_of_range_word_is_undecodable() -> None:
    (block,) = plan_blocks(SDM)
    words = _sdm_words()
    words[0] = 0x1_0000
    with pytest.raises(UndecodableAnswerError, match="out of range"):
        decode_block(block, words, "big")


@pytest.mark.parametrize(
    ("field", "word_order", "value", "words"),
    [
        (Field("1-0:32.7.0", 0, DType.F32), "big", 230.0, [0x4366, 0x0000]),
        (Field("1-0:32.7.0", 0, DType.F32), "little", 230.0, [0x0000, 0x4366]),
        (Field("1-0:32.7.0", 0, DType.U16, 0.01), "little", 230.0, [0x59D8]),
        (Field("1-0:13.7.0", 0, DType.S16, 0.001), "big", -0.9, [0xFC7C]),
        (Field("1-0:16.7.0", 0, DType.S32, 0.00032), "big", -100.0, [0xFFFB, 0x3B4C]),
        (Field("1-0:16.7.0", 0, DType.S32, 0.00032, word_order="big"), "little", 3000.0, [0x008F, 0x0D18]),
        (Field("1-0:16.7.0", 0, DType.S32, 0.00512), "big", -102.4, [0xFFFF, 0xB1E0]),
        (Field("1-0:32.7.0", 0, DType.U32, 1.52588e-7), "big", 230.000164864, [0x59D8, 0x0000]),
        (Field("1-0:1.8.0", 0, DType.U32), "little", 0x12345678, [0x5678, 0x1234]),
        (Field("1-0:1.8.0", 0, DType.U64, 3.125e-6), "little", 50000.0, [0xA000, 0xB9AC, 0x0003, 0x0000]),
        (Field("1-0:1.8.0", 0, DType.U64, 3.125e-6), "big", 50000.0, [0x0000, 0x0003, 0xB9AC, 0xA000]),
    ],
)
def test_encode_field_matches_the_wire_and_round_trips(
    field: Field, word_order: str, value: float, words: list[int]
) -> None:
    assert encode_field(field, value, word_order) == words  # type: ignore[arg-type]
    values, missing = decode_block(Block(4, 0, field.words, (field,)), words, word_order)  # type: ignore[arg-type]
    assert missing == [] and values[0].value == pytest.approx(value, rel=1e-6)


def test_encode_field_rejects_values_out_of_range() -> None:
    with pytest.raises(ValueError, match="outside the u16 range"):
        encode_field(Field("1-0:32.7.0", 0, DType.U16, 0.01), 700.0, "big")
    with pytest.raises(ValueError, match="outside the s16 range"):
        encode_field(Field("1-0:13.7.0", 0, DType.S16, 0.001), -40.0, "big")


def test_encode_block_round_trips_every_profile() -> None:
    for profile in PROFILES.values():
        for block in plan_blocks(profile):
            sample = {f.quantity: 1.0 + (f.address % 7) * 10.5 for f in block.fields}
            words = encode_block(block, sample, profile.word_order)
            assert len(words) == block.count
            # encode_block agrees with encode_field, word for word
            for f in block.fields:
                at = f.address - block.start
                assert words[at : at + f.words] == encode_field(f, sample[f.quantity], profile.word_order)
            values, missing = decode_block(block, words, profile.word_order)
            assert missing == []
            for v in values:
                assert v.value == pytest.approx(sample[v.quantity], abs=profile.field_for(v.quantity).scale)


def test_float_nan_encodes_to_a_nan_pattern() -> None:
    words = encode_field(Field("1-0:32.7.0", 0, DType.F32), math.nan, "big")
    assert words[0] & 0x7F80 == 0x7F80


def test_no_value_encodes_to_the_declared_pattern_and_decodes_back_as_no_value() -> None:
    urms = PROFILES["wb-map3e"].field_for("1-0:32.7.0")
    assert encode_field(urms, None, "big") == [0xFFFF, 0xFFFF]
    angle = Field("1-0:13.7.0", 0, DType.S16, 0.1, 0x7FFF)
    assert encode_field(angle, None, "big") == [0x7FFF]
    block = Block(4, 0, 2, (Field("1-0:32.7.0", 0, DType.F32),))
    assert decode_block(block, encode_block(block, {"1-0:32.7.0": None}, "big"), "big")[0] == []
    with pytest.raises(ValueError, match="no 'no value' pattern"):
        encode_field(PROFILES["wb-map3e"].field_for("1-0:16.7.0"), None, "big")  # P declares none
