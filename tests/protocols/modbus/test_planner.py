"""Block planning: as few requests as the meter allows, never a field split across two."""
from __future__ import annotations

from protocols.modbus.planner import Block, plan_blocks
from protocols.modbus.profiles import PROFILES, DType, Field, Profile


def _profile(fields: tuple[Field, ...], max_read: int = 125, ranges: tuple[tuple[int, int], ...] = ()) -> Profile:
    return Profile("t", 4, "big", max_read, fields, ranges)


def _shape(blocks: tuple[Block, ...]) -> list[tuple[int, int, int]]:
    return [(b.start, b.count, len(b.fields)) for b in blocks]


def test_sdm630_is_one_block() -> None:
    blocks = plan_blocks(PROFILES["sdm630"])
    assert _shape(blocks) == [(0x0000, 80, 18)]
    assert blocks[0].function_code == 4


def test_wb_map3e_blocks() -> None:
    blocks = plan_blocks(PROFILES["wb-map3e"])
    assert _shape(blocks) == [
        (0x10BC, 1, 1),  # PF total: 28 registers before Urms, too far to read through
        (0x10D9, 7, 6),  # Urms L1..L3, one unused register (0x10DC), Irms L1..L3
        (0x10F8, 1, 1),  # frequency
        (0x1200, 36, 5),  # A+ total, L1..L3, then a 16-register gap (== max_gap), R+ total
        (0x1300, 18, 6),  # P total, L1..L3, Q total, 6-register gap, S total
    ]
    assert all(b.count <= 60 for b in blocks)


def test_gap_larger_than_max_gap_splits() -> None:
    p = _profile((Field("1-0:1.8.0", 0, DType.U16), Field("1-0:2.8.0", 18, DType.U16)))
    assert _shape(plan_blocks(p, max_gap=16)) == [(0, 1, 1), (18, 1, 1)]
    assert _shape(plan_blocks(p, max_gap=17)) == [(0, 19, 2)]
    assert _shape(plan_blocks(p, max_gap=0)) == [(0, 1, 1), (18, 1, 1)]


def test_adjacent_fields_merge_with_zero_gap() -> None:
    p = _profile((Field("1-0:1.8.0", 0, DType.U32), Field("1-0:2.8.0", 2, DType.U32)))
    assert _shape(plan_blocks(p, max_gap=0)) == [(0, 4, 2)]


def test_readable_range_bridges_a_wide_gap() -> None:
    fields = (Field("1-0:1.8.0", 0, DType.U16), Field("1-0:2.8.0", 40, DType.U16))
    assert _shape(plan_blocks(_profile(fields, ranges=((0, 41),)))) == [(0, 41, 2)]
    # The range must cover the whole gap.
    assert _shape(plan_blocks(_profile(fields, ranges=((0, 30),)))) == [(0, 1, 1), (40, 1, 1)]


def test_block_size_limit_never_splits_a_field() -> None:
    # Two u64 at 0 and 4 with max 6 registers: 0..7 would be 8 > 6, so two blocks of 4.
    p = _profile((Field("1-0:1.8.0", 0, DType.U64), Field("1-0:2.8.0", 4, DType.U64)), max_read=6)
    assert _shape(plan_blocks(p)) == [(0, 4, 1), (4, 4, 1)]


def test_unsorted_fields_are_sorted() -> None:
    p = _profile((Field("1-0:2.8.0", 10, DType.U16), Field("1-0:1.8.0", 0, DType.U16)))
    blocks = plan_blocks(p)
    assert [f.address for f in blocks[0].fields] == [0, 10]


def test_every_field_in_exactly_one_block_within_limits() -> None:
    for profile in PROFILES.values():
        for gap in (0, 4, 16, 64):
            blocks = plan_blocks(profile, gap)
            planned = [f for b in blocks for f in b.fields]
            assert sorted(planned, key=lambda f: f.address) == sorted(profile.fields, key=lambda f: f.address)
            for b in blocks:
                assert b.count <= min(125, profile.max_read_registers)
                assert all(b.start <= f.address and f.end <= b.end for f in b.fields)


def test_plan_is_cached_and_deterministic() -> None:
    p = PROFILES["wb-map3e"]
    assert plan_blocks(p) is plan_blocks(p)
    rebuilt = Profile(p.name, p.function_code, p.word_order, p.max_read_registers, tuple(reversed(p.fields)))
    assert plan_blocks(rebuilt) == plan_blocks(p)
