"""Block planning: as few requests as the meter allows, never a field split across two, never an
address the profile does not declare readable (beyond its `max_hole`)."""
from __future__ import annotations

from protocols.modbus.planner import Block, plan_blocks
from protocols.modbus.profiles import PROFILES, DType, Field, Profile


def _profile(fields: tuple[Field, ...], max_read: int = 125, ranges: tuple[tuple[int, int], ...] = (),
             max_hole: int = 0) -> Profile:
    return Profile("t", 4, "big", max_read, fields, ranges, max_hole)


def _shape(blocks: tuple[Block, ...]) -> list[tuple[int, int, int]]:
    return [(b.start, b.count, len(b.fields)) for b in blocks]


def test_sdm630_is_one_block_of_80() -> None:
    blocks = plan_blocks(PROFILES["sdm630"])
    assert _shape(blocks) == [(0x0000, 80, 18)]  # exactly the meter's limit (protocol v1.8 §1.1)
    assert blocks[0].function_code == 4


def test_wb_map3e_fw2_blocks() -> None:
    blocks = plan_blocks(PROFILES["wb-map3e"])
    assert _shape(blocks) == [
        (0x10BC, 1, 1),  # Total PF; 0x10C0..0x10F7 are not in the template: not read through
        (0x10F8, 1, 1),  # Frequency
        (0x1200, 52, 7),  # AP total, L1..L3, AN total, RP total, RN total: 0x1200..0x1233, all template channels
        (0x1300, 18, 6),  # P total, L1..L3, Q total, (Q L1..L3), S total
        (0x1410, 12, 6),  # Urms L1..L3, Irms L1..L3 (u32)
    ]
    assert all(b.count <= 60 for b in blocks)


def test_wb_map3e_fw1_blocks() -> None:
    assert _shape(plan_blocks(PROFILES["wb-map3e-fw1"])) == [
        (0x10D9, 3, 3),  # Urms L1..L3 (u16); 0x10DC is no channel of the legacy template
        (0x10DD, 3, 3),  # Irms L1..L3
        (0x10F8, 1, 1),  # Frequency
        (0x1200, 16, 4),  # AP energy total, L1..L3
        (0x1220, 4, 1),  # RP energy total (AN/RN do not exist in the legacy map: 0x1210.. is a hole)
        (0x1300, 18, 6),  # P, Q, S
    ]


def test_hole_larger_than_max_hole_splits() -> None:
    fields = (Field("1-0:1.8.0", 0, DType.U16), Field("1-0:2.8.0", 11, DType.U16))  # hole 1..10: 10 registers
    assert _shape(plan_blocks(_profile(fields, max_hole=9))) == [(0, 1, 1), (11, 1, 1)]
    assert _shape(plan_blocks(_profile(fields, max_hole=10))) == [(0, 12, 2)]
    assert _shape(plan_blocks(_profile(fields))) == [(0, 1, 1), (11, 1, 1)]  # default: no hole at all


def test_default_reads_no_hole_even_of_one_register() -> None:
    fields = (Field("1-0:1.8.0", 0, DType.U16), Field("1-0:2.8.0", 2, DType.U16))
    assert _shape(plan_blocks(_profile(fields))) == [(0, 1, 1), (2, 1, 1)]


def test_adjacent_fields_merge_without_a_hole() -> None:
    p = _profile((Field("1-0:1.8.0", 0, DType.U32), Field("1-0:2.8.0", 2, DType.U32)))
    assert _shape(plan_blocks(p)) == [(0, 4, 2)]


def test_readable_range_bridges_a_wide_gap() -> None:
    fields = (Field("1-0:1.8.0", 0, DType.U16), Field("1-0:2.8.0", 40, DType.U16))
    assert _shape(plan_blocks(_profile(fields, ranges=((0, 41),)))) == [(0, 41, 2)]
    # The range must cover the whole gap...
    assert _shape(plan_blocks(_profile(fields, ranges=((0, 30),)))) == [(0, 1, 1), (40, 1, 1)]
    # ...or leave holes no longer than max_hole: 30..39 is a 10-register hole.
    assert _shape(plan_blocks(_profile(fields, ranges=((0, 30),), max_hole=10))) == [(0, 41, 2)]
    assert _shape(plan_blocks(_profile(fields, ranges=((0, 30),), max_hole=9))) == [(0, 1, 1), (40, 1, 1)]


def test_each_hole_counts_on_its_own() -> None:
    # Two 8-register holes separated by a readable range: each is within max_hole 8, the gap is 26.
    fields = (Field("1-0:1.8.0", 0, DType.U16), Field("1-0:2.8.0", 27, DType.U16))
    assert _shape(plan_blocks(_profile(fields, ranges=((9, 19),), max_hole=8))) == [(0, 28, 2)]
    assert _shape(plan_blocks(_profile(fields, ranges=((9, 19),), max_hole=7))) == [(0, 1, 1), (27, 1, 1)]


def test_block_size_limit_never_splits_a_field() -> None:
    # Two u64 at 0 and 4 with max 6 registers: 0..7 would be 8 > 6, so two blocks of 4.
    p = _profile((Field("1-0:1.8.0", 0, DType.U64), Field("1-0:2.8.0", 4, DType.U64)), max_read=6)
    assert _shape(plan_blocks(p)) == [(0, 4, 1), (4, 4, 1)]


def test_unsorted_fields_are_sorted() -> None:
    p = _profile((Field("1-0:2.8.0", 10, DType.U16), Field("1-0:1.8.0", 0, DType.U16)), ranges=((0, 11),))
    blocks = plan_blocks(p)
    assert [f.address for f in blocks[0].fields] == [0, 10]


def test_every_block_reads_only_declared_registers_within_limits() -> None:
    for profile in PROFILES.values():
        blocks = plan_blocks(profile)
        planned = [f for b in blocks for f in b.fields]
        assert sorted(planned, key=lambda f: f.address) == sorted(profile.fields, key=lambda f: f.address)
        for b in blocks:
            assert b.count <= min(125, profile.max_read_registers)
            assert all(b.start <= f.address and f.end <= b.end for f in b.fields)
            assert all(hi - lo <= profile.max_hole for lo, hi in profile.holes(b.start, b.end)), profile.name
            assert b.start % profile.alignment == 0 and b.count % profile.alignment == 0


def test_plan_is_cached_and_deterministic() -> None:
    p = PROFILES["wb-map3e"]
    assert plan_blocks(p) is plan_blocks(p)
    rebuilt = Profile(p.name, p.function_code, p.word_order, p.max_read_registers, tuple(reversed(p.fields)),
                      p.readable_ranges, p.max_hole)
    assert plan_blocks(rebuilt) == plan_blocks(p)
