"""Turn a profile's fields into as few read requests as the meter allows.

Over Modbus TCP, and even more behind an RTU gateway, a request round-trip costs far more than a
few extra registers in the answer, so neighbouring fields are merged into one block. The gaps
between them are read through only where the meter answers them: registers the profile declares
(`readable_ranges`), or undeclared holes of at most `profile.max_hole` registers. A meter answers
a request that touches any other address with exception 0x02, however small the hole. A field is
never split across two requests: its words must come from one answer to be consistent.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

from .profiles import MODBUS_MAX_READ, Field, Profile


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


def _bridgeable(profile: Profile, gap_start: int, gap_end: int) -> bool:
    """True when every undeclared run between two fields is at most `profile.max_hole` long."""
    return all(hi - lo <= profile.max_hole for lo, hi in profile.holes(gap_start, gap_end))


@functools.cache
def plan_blocks(profile: Profile) -> tuple[Block, ...]:
    """Blocks covering every field of `profile`, in address order.

    Fields are merged while the block stays within min(125, profile.max_read_registers)
    registers and every undeclared hole between two fields is at most `profile.max_hole`
    registers (see module doc). Pure and deterministic; cached per profile because it runs on
    every poll.
    """
    limit = min(MODBUS_MAX_READ, profile.max_read_registers)
    ordered = sorted(profile.fields, key=lambda f: f.address)
    blocks: list[Block] = []
    group: list[Field] = [ordered[0]]
    start, end = ordered[0].address, ordered[0].end
    for f in ordered[1:]:
        if f.end - start <= limit and _bridgeable(profile, end, f.address):
            group.append(f)
            end = f.end
            continue
        blocks.append(Block(profile.function_code, start, end - start, tuple(group)))
        group, start, end = [f], f.address, f.end
    blocks.append(Block(profile.function_code, start, end - start, tuple(group)))
    return tuple(blocks)
