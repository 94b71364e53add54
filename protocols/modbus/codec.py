"""Pure register codec: 16-bit words ⇄ OBIS values, per block.

Decoding runs for every poll of hundreds of meters a second, so each (block, word order) is
compiled once into a layout: an index permutation that puts every field's words in big-endian
word order, and one `struct.Struct` that unpacks all fields in a single call. The per-poll work is
then one pack, one unpack and a short loop that applies scale and error checks.
"""
from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import NamedTuple

from meterray.domain import Value
from meterray.quantities import QUANTITIES

from .planner import Block
from .profiles import Field, WordOrder


@dataclass(frozen=True, slots=True)
class NoValue:
    """The meter's own "no value" for one quantity: the error pattern its vendor declares for
    that register, or a NaN/inf float. Not a failure of the meter or of the poll."""

    quantity: str
    address: int
    reason: str
    raw_words: tuple[int, ...]


class UndecodableAnswerError(ValueError):
    """An answer that cannot be decoded at all (wrong register count, words outside 0..0xFFFF)."""

    def __init__(self, address: int, reason: str, raw_words: tuple[int, ...]) -> None:
        super().__init__(reason)
        self.address = address
        self.reason = reason
        self.raw_words = raw_words


class _Spec(NamedTuple):
    quantity: str
    unit: str
    scale: float
    error: int | None  # error value in the unpacked (possibly signed) representation
    is_float: bool
    address: int
    offset: int  # first word of the field inside the block
    words: int


@dataclass(frozen=True, slots=True)
class _Layout:
    count: int
    n_words: int
    gather: Callable[[Sequence[int]], tuple[int, ...]]  # block words → field words, big word order
    words_struct: struct.Struct  # ">nH": the gathered words as bytes
    values_struct: struct.Struct  # all fields, big-endian, back to back
    positions: tuple[int, ...]  # gathered word i goes to block offset positions[i] (encode)
    specs: tuple[_Spec, ...]


def _order(field: Field, default: WordOrder) -> WordOrder:
    return field.word_order or default


def _signed_error(field: Field) -> int | None:
    """The error pattern as `struct` will unpack it: a signed type sees a pattern with the top bit set
    as negative (0xFFFF → -1); 0x7FFF, Wiren Board's signed error value, stays 32767."""
    if field.error_value is None:
        return None
    bits = 16 * field.words
    if field.dtype.struct_char.islower() and field.error_value >= 1 << (bits - 1):
        return field.error_value - (1 << bits)
    return field.error_value


@functools.lru_cache(maxsize=4096)
def _layout(block: Block, word_order: WordOrder) -> _Layout:
    positions: list[int] = []
    specs: list[_Spec] = []
    fmt = [">"]
    for f in block.fields:
        offset = f.address - block.start
        idx = list(range(offset, offset + f.words))
        if _order(f, word_order) == "little":
            idx.reverse()  # low word first on the wire → high word first for struct
        positions.extend(idx)
        fmt.append(f.dtype.struct_char)
        unit = QUANTITIES[f.quantity].unit
        specs.append(_Spec(f.quantity, unit, f.scale, _signed_error(f), f.dtype.is_float, f.address, offset, f.words))
    getter = itemgetter(*positions)
    gather: Callable[[Sequence[int]], tuple[int, ...]] = getter

    def gather_one(words: Sequence[int]) -> tuple[int, ...]:
        return (getter(words),)  # itemgetter of one index returns a scalar, not a tuple

    if len(positions) == 1:
        gather = gather_one
    return _Layout(
        count=block.count,
        n_words=len(positions),
        gather=gather,
        words_struct=struct.Struct(f">{len(positions)}H"),
        values_struct=struct.Struct("".join(fmt)),
        positions=tuple(positions),
        specs=tuple(specs),
    )


def decode_block(
    block: Block, registers: Sequence[int], word_order: WordOrder
) -> tuple[list[Value], list[NoValue]]:
    """Decode the answer to one block read.

    `word_order` is the profile's default; fields with their own `word_order` use that. Values
    carry their quantity's unit from meterray.quantities. A value equal to the field's declared
    error value, or a NaN/inf float, is a NoValue instead (fields without an error value have
    none: every raw pattern is a value). A wrong register count, or a word outside 0..0xFFFF,
    raises UndecodableAnswerError: nothing of such an answer can be trusted.
    """
    layout = _layout(block, word_order)
    if len(registers) != layout.count:
        raise UndecodableAnswerError(block.start, f"expected {layout.count} registers from 0x{block.start:04X}, "
                                     f"got {len(registers)}", tuple(registers))
    try:
        raw_values = layout.values_struct.unpack(layout.words_struct.pack(*layout.gather(registers)))
    except struct.error as err:
        raise UndecodableAnswerError(block.start, f"register words out of range: {err}", tuple(registers)) from None
    values: list[Value] = []
    missing: list[NoValue] = []
    isfinite = math.isfinite
    for spec, raw in zip(layout.specs, raw_values, strict=True):
        if raw == spec.error:
            words = tuple(registers[spec.offset : spec.offset + spec.words])
            pattern = "".join(f"{w:04X}" for w in words)
            missing.append(NoValue(spec.quantity, spec.address, f"meter reported its error value 0x{pattern}", words))
        elif spec.is_float and not isfinite(raw):
            words = tuple(registers[spec.offset : spec.offset + spec.words])
            missing.append(NoValue(spec.quantity, spec.address, f"not a finite number ({raw})", words))
        else:
            values.append(Value(spec.quantity, raw * spec.scale, spec.unit, 0))  # positional: ~25% faster
    return values, missing


def _raw_for(field: Field, value: float | None) -> int | float:
    """Engineering value → the raw number the register holds (inverse of scale); None → the
    field's "no value" pattern (NaN for floats, the declared error value otherwise)."""
    if value is None:
        if field.dtype.is_float:
            return math.nan
        error = _signed_error(field)
        if error is None:
            raise ValueError(f"{field.quantity}: the meter declares no 'no value' pattern for this {field.dtype} field")
        return error
    if field.dtype.is_float:
        return value / field.scale if field.scale != 1.0 else value
    raw = round(value / field.scale)
    bits = 16 * field.words
    signed = field.dtype.struct_char.islower()
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not lo <= raw <= hi:
        raise ValueError(f"{field.quantity}: {value} scales to {raw}, outside the {field.dtype} range {lo}..{hi}")
    return raw


def encode_field(field: Field, value: float | None, word_order: WordOrder) -> list[int]:
    """The register words a meter would hold for `value` (inverse of decoding one field); None
    gives the field's "no value" pattern."""
    data = struct.pack(">" + field.dtype.struct_char, _raw_for(field, value))
    words = list(struct.unpack(f">{field.words}H", data))
    if _order(field, word_order) == "little":
        words.reverse()
    return words


def encode_block(block: Block, values: Mapping[str, float | None], word_order: WordOrder) -> list[int]:
    """All `block.count` words for `values` (quantity → engineering value, or None for the field's
    "no value" pattern); registers between fields are 0. Every field of the block must have an
    entry. Used by the simulator per request."""
    layout = _layout(block, word_order)
    raws = [_raw_for(f, values[f.quantity]) for f in block.fields]
    gathered = layout.words_struct.unpack(layout.values_struct.pack(*raws))
    out = [0] * layout.count
    for pos, word in zip(layout.positions, gathered, strict=True):
        out[pos] = word
    return out
