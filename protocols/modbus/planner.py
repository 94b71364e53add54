"""Turn a profile's fields into as few read requests as the meter allows.

Over Modbus TCP, and even more behind an RTU gateway, a request round-trip costs far more than a
few extra registers in the answer, so neighbouring fields are merged into one block and small
gaps are read through. A field is never split across two requests: its words must come from one
answer to be consistent.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

from .profiles import MODBUS_MAX_READ, Field, Profile

DEFAULT_MAX_GAP = 16


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: `count` registers from `start` with function code `function_code`;
    `fields` are the fields it carries, in address order."""

    function_code: int
    start: int
    count: int
    fields: tuple[Field, ...]
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Blocks key the codec's layout cache on every poll; hash the frozen content once.
        object.__setattr__(self, "_hash", hash((self.function_code, self.start, self.count, self.fields)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def end(self) -> int:
        return self.start + self.count


def _gap_readable(profile: Profile, gap_start: int, gap_end: int) -> bool:
    return any(lo <= gap_start and gap_end <= hi for lo, hi in profile.readable_ranges)


@functools.cache
def plan_blocks(profile: Profile, max_gap: int = DEFAULT_MAX_GAP) -> tuple[Block, ...]:
    """Blocks covering every field of `profile`, in address order.

    Fields are merged while the block stays within min(125, profile.max_read_registers)
    registers and the unused registers between two fields number at most `max_gap` (or lie in
    one of the profile's `readable_ranges`). Pure and deterministic; cached per (profile, max_gap)
    because it runs on every poll.
    """
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    limit = min(MODBUS_MAX_READ, profile.max_read_registers)
    ordered = sorted(profile.fields, key=lambda f: f.address)
    blocks: list[Block] = []
    group: list[Field] = [ordered[0]]
    start, end = ordered[0].address, ordered[0].end
    for f in ordered[1:]:
        gap = f.address - end
        bridgeable = gap <= max_gap or _gap_readable(profile, end, f.address)
        if bridgeable and f.end - start <= limit:
            group.append(f)
            end = f.end
            continue
        blocks.append(Block(profile.function_code, start, end - start, tuple(group)))
        group, start, end = [f], f.address, f.end
    blocks.append(Block(profile.function_code, start, end - start, tuple(group)))
    return tuple(blocks)
