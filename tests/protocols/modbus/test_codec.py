"""Codec against raw register words as the meters put them on the wire.

Each fixture lists the words a real meter would answer for a block read, commented with what
they mean, and the values we expect out.
"""
from __future__ import annotations

import math

import pytest

from protocols.modbus.codec import decode_block, encode_block, encode_field
from protocols.modbus.planner import plan_blocks
from protocols.modbus.profiles import PROFILES, DType, Field

SDM = PROFILES["sdm630"]
WB = PROFILES["wb-map3e"]


def _sdm_words() -> list[int]:
    """SDM630 answer to FC04 0x0000+80: float32, high word first (ABCD)."""
    w = [0] * 80  # unmapped registers in the block (per-phase VA, angles, ...) read as 0 here
    w[0x00:0x02] = [0x4366, 0x0000]  # V L1 = 230.0
    w[0x02:0x04] = [0x4367, 0x8000]  # V L2 = 231.5
    w[0x04:0x06] = [0x4365, 0xCCCD]  # V L3 = 229.8 (nearest float32: 229.8000030517578)
    w[0x06:0x08] = [0x4124, 0x0000]  # I L1 = 10.25 A
    w[0x08:0x0A] = [0x4118, 0x0000]  # I L2 = 9.5 A
    w[0x0A:0x0C] = [0x4100, 0x0000]  # I L3 = 8.0 A
    w[0x0C:0x0E] = [0x4513, 0x5800]  # P L1 = 2357.5 W
    w[0x0E:0x10] = [0xC2F0, 0x0000]  # P L2 = -120.0 W (exporting phase)
    w[0x10:0x12] = [0x44E6, 0x0000]  # P L3 = 1840.0 W
    w[0x34:0x36] = [0x457E, 0xD800]  # P total = 4077.5 W
    w[0x38:0x3A] = [0x4586, 0x6000]  # S total = 4300.0 VA
    w[0x3C:0x3E] = [0x44BB, 0x8000]  # Q total = 1500.0 var
    w[0x3E:0x40] = [0x3F73, 0x3333]  # PF = 0.95 (0.949999988079071)
    w[0x46:0x48] = [0x4248, 0x0000]  # f = 50.0 Hz
    w[0x48:0x4A] = [0x4640, 0xE6B6]  # A+ = 12345.678 kWh (12345.677734375)
    w[0x4A:0x4C] = [0x4060, 0x0000]  # A- = 3.5 kWh
    w[0x4C:0x4E] = [0x450A, 0x2400]  # R+ = 2210.25 kvarh
    w[0x4E:0x50] = [0x4120, 0x0000]  # R- = 10.0 kvarh
    return w


SDM_EXPECTED = {
    "1-0:32.7.0": (230.0, "V"), "1-0:52.7.0": (231.5, "V"), "1-0:72.7.0": (229.8000030517578, "V"),
    "1-0:31.7.0": (10.25, "A"), "1-0:51.7.0": (9.5, "A"), "1-0:71.7.0": (8.0, "A"),
    "1-0:21.7.0": (2357.5, "W"), "1-0:41.7.0": (-120.0, "W"), "1-0:61.7.0": (1840.0, "W"),
    "1-0:1.7.0": (4077.5, "W"), "1-0:9.7.0": (4300.0, "VA"), "1-0:3.7.0": (1500.0, "var"),
    "1-0:13.7.0": (0.949999988079071, ""), "1-0:14.7.0": (50.0, "Hz"),
    "1-0:1.8.0": (12345.677734375, "kWh"), "1-0:2.8.0": (3.5, "kWh"),
    "1-0:3.8.0": (2210.25, "kvarh"), "1-0:4.8.0": (10.0, "kvarh"),
}

# WB-MAP3E answers, one per planned block (see test_planner.test_wb_map3e_blocks).
WB_WORDS = [
    [0x03A2],  # 0x10BC PF total s16 = 930 → 0.930
    [
        0x59D8, 0x59A6, 0x5A41,  # 0x10D9..DB Urms u16 ×0.01: 23000, 22950, 23105 → 230.00, 229.50, 231.05 V
        0x0000,  # 0x10DC unused
        0x280A, 0x251C, 0x1F40,  # 0x10DD..DF Irms u16 ×0.001: 10250, 9500, 8000 → 10.25, 9.5, 8.0 A
    ],
    [0x138A],  # 0x10F8 frequency u16 ×0.01: 5002 → 50.02 Hz
    [
        0xA000, 0xB9AC, 0x0003, 0x0000,  # 0x1200 A+ u64 LOW word first: 0x3_B9AC_A000 = 16e9 → 50000.0 kWh
        0xE080, 0x4E7D, 0x0000, 0x0000,  # 0x1204 A+ L1: 0x4E7D_E080 = 1316872320 → 4115.226 kWh
        0xE080, 0x4E7D, 0x0000, 0x0000,  # 0x1208 A+ L2
        0xE080, 0x4E7D, 0x0000, 0x0000,  # 0x120C A+ L3
        *[0x0000] * 16,  # 0x1210..0x121F: A- counters we do not map, read through
        0x3C80, 0x2A28, 0x0000, 0x0000,  # 0x1220 R+ total: 707280000 → 2210.25 kvarh
    ],
    [
        0x008F, 0x0D18,  # 0x1300 P total s32 HIGH word first ×0.00032: 9375000 → 3000 W
        0x0039, 0x3870,  # 0x1302 P L1: 3750000 → 1200 W
        0x005A, 0x995C,  # 0x1304 P L2: 5937500 → 1900 W
        0xFFFB, 0x3B4C,  # 0x1306 P L3: -312500 → -100 W (negative: two's complement)
        0x0045, 0x2432,  # 0x1308 Q total: 4531250 → 1450 var
        0x0000, 0x0000, 0x0000, 0x0000, 0x0000, 0x0000,  # 0x130A..0x130F Q L1..L3, unmapped
        0x009D, 0x5B34,  # 0x1310 S total: 10312500 → 3300 VA
    ],
]

WB_EXPECTED = {
    "1-0:13.7.0": (0.93, ""), "1-0:32.7.0": (230.0, "V"), "1-0:52.7.0": (229.5, "V"), "1-0:72.7.0": (231.05, "V"),
    "1-0:31.7.0": (10.25, "A"), "1-0:51.7.0": (9.5, "A"), "1-0:71.7.0": (8.0, "A"), "1-0:14.7.0": (50.02, "Hz"),
    "1-0:1.8.0": (50000.0, "kWh"), "1-0:21.8.0": (4115.226, "kWh"), "1-0:41.8.0": (4115.226, "kWh"),
    "1-0:61.8.0": (4115.226, "kWh"), "1-0:3.8.0": (2210.25, "kvarh"),
    "1-0:1.7.0": (3000.0, "W"), "1-0:21.7.0": (1200.0, "W"), "1-0:41.7.0": (1900.0, "W"),
    "1-0:61.7.0": (-100.0, "W"), "1-0:3.7.0": (1450.0, "var"), "1-0:9.7.0": (3300.0, "VA"),
}


def test_sdm630_block_decodes() -> None:
    (block,) = plan_blocks(SDM)
    values, problems = decode_block(block, _sdm_words(), SDM.word_order)
    assert problems == []
    assert {v.quantity: (v.value, v.unit) for v in values} == SDM_EXPECTED
    assert all(v.quality == 0 for v in values)


def test_wb_map3e_blocks_decode() -> None:
    blocks = plan_blocks(WB)
    assert [b.count for b in blocks] == [len(w) for w in WB_WORDS]
    decoded = {}
    for block, words in zip(blocks, WB_WORDS, strict=True):
        values, problems = decode_block(block, words, WB.word_order)
        assert problems == []
        decoded.update({v.quantity: (v.value, v.unit) for v in values})
    assert decoded.keys() == WB_EXPECTED.keys()
    for quantity, (value, unit) in WB_EXPECTED.items():
        assert decoded[quantity][0] == pytest.approx(value, rel=1e-9), quantity
        assert decoded[quantity][1] == unit


def test_wrong_word_order_would_be_caught_by_the_fixture() -> None:
    # Decoding the u64 counters high word first gives an absurd number: the fixture pins the order.
    block = plan_blocks(WB)[3]
    values, _ = decode_block(block, WB_WORDS[3], "big")
    assert values[0].value > 1e9


def test_nan_and_inf_are_problems_not_values() -> None:
    (block,) = plan_blocks(SDM)
    words = _sdm_words()
    words[0x00:0x02] = [0xFFFF, 0xFFFF]  # V L1: NaN, what an SDM630 "garbage" answer looks like
    words[0x46:0x48] = [0x7F80, 0x0000]  # f: +inf
    values, problems = decode_block(block, words, "big")
    assert [(p.quantity, p.address, p.raw_words) for p in problems] == [
        ("1-0:32.7.0", 0x00, (0xFFFF, 0xFFFF)),
        ("1-0:14.7.0", 0x46, (0x7F80, 0x0000)),
    ]
    assert "not a finite number" in problems[0].reason
    assert len(values) == len(SDM.fields) - 2


def test_error_values_are_problems() -> None:
    blocks = plan_blocks(WB)
    urms = list(WB_WORDS[1])
    urms[0] = 0xFFFF  # Urms L1 "no value"
    values, problems = decode_block(blocks[1], urms, "little")
    assert [(p.quantity, p.reason) for p in problems] == [("1-0:32.7.0", "meter reported its error value 0xFFFF")]
    assert len(values) == 5
    # Signed fields: all-ones s32 is the error value too, not -0.32 mW.
    power = list(WB_WORDS[4])
    power[0:2] = [0xFFFF, 0xFFFF]
    _, problems = decode_block(blocks[4], power, "little")
    assert [(p.quantity, p.raw_words) for p in problems] == [("1-0:1.7.0", (0xFFFF, 0xFFFF))]
    # u64 all-ones
    _, problems = decode_block(blocks[3], [0xFFFF] * 36, "little")
    assert len(problems) == 5
    assert problems[0].reason == "meter reported its error value 0xFFFFFFFFFFFFFFFF"


def test_pf_s16_negative_is_a_value() -> None:
    (pf_block,) = [b for b in plan_blocks(WB) if b.start == 0x10BC]
    values, problems = decode_block(pf_block, [0xFC7C], "little")  # -900 → -0.9 (leading PF)
    assert problems == [] and values[0].value == pytest.approx(-0.9)


@pytest.mark.parametrize("count", [0, 79, 81])
def test_wrong_register_count_is_one_problem_for_the_block(count: int) -> None:
    (block,) = plan_blocks(SDM)
    values, problems = decode_block(block, [0] * count, "big")
    assert values == []
    assert len(problems) == 1 and problems[0].quantity == "*" and problems[0].address == 0
    assert f"expected 80 registers from 0x0000, got {count}" == problems[0].reason


def test_out_of_range_word_is_a_block_problem() -> None:
    (block,) = plan_blocks(SDM)
    words = _sdm_words()
    words[0] = 0x1_0000
    values, problems = decode_block(block, words, "big")
    assert values == [] and problems[0].quantity == "*"


@pytest.mark.parametrize(
    ("field", "word_order", "value", "words"),
    [
        (Field("1-0:32.7.0", 0, DType.F32), "big", 230.0, [0x4366, 0x0000]),
        (Field("1-0:32.7.0", 0, DType.F32), "little", 230.0, [0x0000, 0x4366]),
        (Field("1-0:32.7.0", 0, DType.U16, 0.01), "little", 230.0, [0x59D8]),
        (Field("1-0:13.7.0", 0, DType.S16, 0.001), "big", -0.9, [0xFC7C]),
        (Field("1-0:1.7.0", 0, DType.S32, 0.00032), "big", -100.0, [0xFFFB, 0x3B4C]),
        (Field("1-0:1.7.0", 0, DType.S32, 0.00032, word_order="big"), "little", 3000.0, [0x008F, 0x0D18]),
        (Field("1-0:1.8.0", 0, DType.U32), "little", 0x12345678, [0x5678, 0x1234]),
        (Field("1-0:1.8.0", 0, DType.U64, 3.125e-6), "little", 50000.0, [0xA000, 0xB9AC, 0x0003, 0x0000]),
        (Field("1-0:1.8.0", 0, DType.U64, 3.125e-6), "big", 50000.0, [0x0000, 0x0003, 0xB9AC, 0xA000]),
    ],
)
def test_encode_field_matches_the_wire_and_round_trips(
    field: Field, word_order: str, value: float, words: list[int]
) -> None:
    assert encode_field(field, value, word_order) == words  # type: ignore[arg-type]
    from protocols.modbus.planner import Block

    values, problems = decode_block(Block(4, 0, field.words, (field,)), words, word_order)  # type: ignore[arg-type]
    assert problems == [] and values[0].value == pytest.approx(value, rel=1e-6)


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
            values, problems = decode_block(block, words, profile.word_order)
            assert problems == []
            for v in values:
                assert v.value == pytest.approx(sample[v.quantity], abs=profile.field_for(v.quantity).scale)


def test_float_nan_encodes_to_a_nan_pattern() -> None:
    words = encode_field(Field("1-0:32.7.0", 0, DType.F32), math.nan, "big")
    assert words[0] & 0x7F80 == 0x7F80
