"""Meter models as data: which registers hold which OBIS quantity, in which encoding.

A `Profile` is a frozen table validated when it is built, so a typo in an address or an OBIS code
fails at import time with a message naming the field, not at 3 a.m. on the first poll. Addresses
are 0-based *protocol* addresses (what goes on the wire), never the 30001-style register numbers
that vendor datasheets print; `eastron_number_to_address` converts between the two.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from meterray.quantities import QUANTITIES

WordOrder = Literal["big", "little"]  # big: high word first (ABCD); little: low word first (CDAB)
WORD_ORDERS: tuple[str, ...] = ("big", "little")

# Modbus application protocol v1.1b3 §6.3/§6.4: one read carries at most 125 registers.
MODBUS_MAX_READ = 125
READ_FUNCTION_CODES = (3, 4)  # read holding registers, read input registers


class DType(StrEnum):
    U16 = "u16"
    S16 = "s16"
    U32 = "u32"
    S32 = "s32"
    U64 = "u64"
    F32 = "f32"

    @property
    def words(self) -> int:
        """Number of 16-bit registers one value occupies."""
        return _WORDS[self]

    @property
    def struct_char(self) -> str:
        """`struct` format character for the value in big-endian byte order."""
        return _STRUCT[self]

    @property
    def is_float(self) -> bool:
        return self is DType.F32


_WORDS = {DType.U16: 1, DType.S16: 1, DType.U32: 2, DType.S32: 2, DType.U64: 4, DType.F32: 2}
_STRUCT = {DType.U16: "H", DType.S16: "h", DType.U32: "I", DType.S32: "i", DType.U64: "Q", DType.F32: "f"}


@dataclass(frozen=True, slots=True)
class Field:
    """One quantity in a meter's register map.

    `error_value` is the raw register pattern (as an unsigned integer) the meter uses for "no
    value"; `word_order` overrides the profile's order for this field only, for meters whose
    datasheet mixes orders (WB-MAP3E does: s32 powers high word first, u64 energies low word first).
    """

    quantity: str
    address: int
    dtype: DType
    scale: float = 1.0
    error_value: int | None = None
    word_order: WordOrder | None = None

    def __post_init__(self) -> None:
        where = f"field {self.quantity!r} at 0x{self.address:04X}" if isinstance(self.address, int) else repr(self)
        if self.quantity not in QUANTITIES:
            raise ValueError(f"{where}: unknown OBIS code; use a key of meterray.quantities.QUANTITIES")
        if not isinstance(self.dtype, DType):
            object.__setattr__(self, "dtype", DType(self.dtype))
        last = self.address + self.dtype.words - 1
        if not (0 <= self.address and last <= 0xFFFF):
            raise ValueError(
                f"{where}: {self.dtype} spans 0x{self.address:04X}..0x{last:04X}, outside the Modbus "
                "address range 0x0000..0xFFFF (use the 0-based protocol address, not a 30001-style number)"
            )
        if not (math.isfinite(self.scale) and self.scale != 0):
            raise ValueError(f"{where}: scale must be a finite, non-zero number, got {self.scale!r}")
        if self.error_value is not None:
            if self.dtype.is_float:
                raise ValueError(f"{where}: float32 fields take no error_value; NaN/inf is reported already")
            limit = (1 << (16 * self.dtype.words)) - 1
            if not 0 <= self.error_value <= limit:
                raise ValueError(
                    f"{where}: error_value 0x{self.error_value:X} does not fit a {self.dtype} "
                    f"(give the raw unsigned pattern, 0..0x{limit:X})"
                )
        if self.word_order is not None:
            if self.word_order not in WORD_ORDERS:
                raise ValueError(f"{where}: word_order must be 'big' or 'little', got {self.word_order!r}")
            if self.dtype.words == 1:
                raise ValueError(f"{where}: word_order only applies to multi-register types, not {self.dtype}")

    @property
    def words(self) -> int:
        return self.dtype.words

    @property
    def end(self) -> int:
        """First address after this field."""
        return self.address + self.dtype.words


@dataclass(frozen=True, slots=True)
class Profile:
    """A meter model: function code, default word order, request size limit and fields.

    `readable_ranges` lists `(start, end)` address ranges (end exclusive) that the meter answers
    in full, unused registers included; the planner may read through any gap inside one of them
    whatever its `max_gap`.
    """

    name: str
    function_code: int
    word_order: WordOrder
    max_read_registers: int
    fields: tuple[Field, ...]
    readable_ranges: tuple[tuple[int, int], ...] = ()
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "readable_ranges", tuple(tuple(r) for r in self.readable_ranges))
        p = f"profile {self.name!r}"
        if not self.name:
            raise ValueError("profile name must not be empty")
        if self.function_code not in READ_FUNCTION_CODES:
            raise ValueError(f"{p}: function_code must be 3 (holding) or 4 (input registers), got {self.function_code}")
        if self.word_order not in WORD_ORDERS:
            raise ValueError(f"{p}: word_order must be 'big' (high word first) or 'little', got {self.word_order!r}")
        if not 1 <= self.max_read_registers <= MODBUS_MAX_READ:
            raise ValueError(f"{p}: max_read_registers must be 1..{MODBUS_MAX_READ}, got {self.max_read_registers}")
        if not self.fields:
            raise ValueError(f"{p}: has no fields")
        seen: dict[str, Field] = {}
        for f in self.fields:
            if not isinstance(f, Field):
                raise TypeError(f"{p}: fields must be Field instances, got {f!r}")
            if f.quantity in seen:
                raise ValueError(
                    f"{p}: {f.quantity} is mapped twice (0x{seen[f.quantity].address:04X} and 0x{f.address:04X}); "
                    "keep one"
                )
            seen[f.quantity] = f
            if f.words > self.max_read_registers:
                raise ValueError(f"{p}: {f.quantity} needs {f.words} registers, more than max_read_registers")
        ordered = sorted(self.fields, key=lambda f: f.address)
        for a, b in itertools.pairwise(ordered):
            if b.address < a.end:
                raise ValueError(
                    f"{p}: {a.quantity} ({a.dtype} at 0x{a.address:04X}..0x{a.end - 1:04X}) overlaps "
                    f"{b.quantity} at 0x{b.address:04X}; check the datasheet addresses"
                )
        for r in self.readable_ranges:
            if len(r) != 2 or not 0 <= r[0] < r[1] <= 0x10000:
                raise ValueError(f"{p}: readable range {r!r} must be (start, end) with 0 <= start < end <= 0x10000")
        # Hashed on every poll (plan cache key): compute once, the table is frozen.
        object.__setattr__(
            self,
            "_hash",
            hash((self.name, self.function_code, self.word_order, self.max_read_registers, self.fields,
                  self.readable_ranges)),
        )

    def __hash__(self) -> int:
        return self._hash

    def field_for(self, quantity: str) -> Field:
        for f in self.fields:
            if f.quantity == quantity:
                return f
        raise KeyError(f"profile {self.name!r} has no field for {quantity!r}")


# Eastron datasheets number input registers 30001, 30003, ... and holding registers 40001, ...;
# the protocol address is number - 30001 (resp. 40001) (SDM630 Modbus protocol v1.8, §"Input
# registers"; energy_domain.md §1.2 "Address convention trap").
_EASTRON_BASES = {4: 30001, 3: 40001}


def eastron_number_to_address(number: int) -> tuple[int, int]:
    """Eastron register number (30001-style input, 40001-style holding) → (function_code, address)."""
    for fc, base in _EASTRON_BASES.items():
        if base <= number < base + 9999:
            return fc, number - base
    raise ValueError(
        f"{number} is not an Eastron register number (30001..39999 for input, 40001..49999 for holding registers)"
    )


def address_to_eastron_number(address: int, function_code: int = 4) -> int:
    """Protocol address → Eastron register number for the given function code (4 → 3xxxx, 3 → 4xxxx)."""
    if function_code not in _EASTRON_BASES:
        raise ValueError(f"function code {function_code} has no Eastron register numbering; use 3 or 4")
    if not 0 <= address < 9999:
        raise ValueError(f"address 0x{address:04X} is beyond the 5-digit Eastron numbering (0..9998)")
    return _EASTRON_BASES[function_code] + address


def _sdm630() -> Profile:
    """Eastron SDM630 v2: FC04, IEEE-754 float32, high word first (SDM630 Modbus protocol v1.8 /
    v2.0 input register table; nmakel/sdm_modbus meter.py: wordorder = byteorder = Endian.Big)."""
    f = DType.F32
    return Profile(
        name="sdm630",
        function_code=4,
        word_order="big",
        max_read_registers=MODBUS_MAX_READ,
        fields=(
            Field("1-0:32.7.0", 0x0000, f),  # phase 1 line-to-neutral volts
            Field("1-0:52.7.0", 0x0002, f),
            Field("1-0:72.7.0", 0x0004, f),
            Field("1-0:31.7.0", 0x0006, f),  # phase 1 current, A
            Field("1-0:51.7.0", 0x0008, f),
            Field("1-0:71.7.0", 0x000A, f),
            Field("1-0:21.7.0", 0x000C, f),  # phase 1 active power, W
            Field("1-0:41.7.0", 0x000E, f),
            Field("1-0:61.7.0", 0x0010, f),
            Field("1-0:1.7.0", 0x0034, f),  # total system power, W
            Field("1-0:9.7.0", 0x0038, f),  # total system VA
            Field("1-0:3.7.0", 0x003C, f),  # total system VAr
            Field("1-0:13.7.0", 0x003E, f),  # total system power factor
            Field("1-0:14.7.0", 0x0046, f),  # frequency of supply voltages, Hz
            Field("1-0:1.8.0", 0x0048, f),  # import Wh since last reset, in kWh
            Field("1-0:2.8.0", 0x004A, f),  # export kWh
            Field("1-0:3.8.0", 0x004C, f),  # import kVArh
            Field("1-0:4.8.0", 0x004E, f),  # export kVArh
        ),
        # Every register 0x0000..0x004F is answered by the meter (per-phase VA/VAr/PF/angles and
        # averages fill the gap 0x0012..0x0033); sdm_modbus reads exactly this range as its batch 1.
        # So the whole meter is one request of 80 registers.
        readable_ranges=((0x0000, 0x0050),),
    )


def _wb_map3e() -> Profile:
    """Wiren Board WB-MAP3E: FC04 scaled integers (wirenboard/wb-mqtt-serial
    templates/config-map3e.json, max_read_registers 60).

    Word order: the template marks the u64 energy counters "little_endian" (low word first) and
    leaves the s32 powers at wb-mqtt-serial's default, big_endian. The profile default is
    "little" and the s32 powers override it with "big", as the template does.
    PF: the legacy template has only PF L1..L3 at 0x10BD..0x10BF; config-map3e-fw2.json adds
    "Total PF" at 0x10BC (s16 ×0.001), right before them, which is what we map to 1-0:13.7.0.
    Error values: all-ones (0xFFFF / 0xFFFFFFFF / 0xFFFF...FF) is Wiren Board's "no value"
    pattern for unsigned registers (fw2 template: Urms u32 0xFFFFFFFF, U L1-L2 u16 0xFFFF). We use
    all-ones for the signed fields too, which costs one raw value (-1: -0.32 mW, PF -0.001).
    """
    e16, e32, e64 = 0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF
    u16, s16, s32, u64 = DType.U16, DType.S16, DType.S32, DType.U64
    pw = 0.00032  # W (var, VA) per LSB for P/Q/S, fw1 template
    en = 3.125e-6  # kWh (kvarh) per LSB for energy counters, fw1 template
    return Profile(
        name="wb-map3e",
        function_code=4,
        word_order="little",
        max_read_registers=60,
        fields=(
            Field("1-0:13.7.0", 0x10BC, s16, 0.001, e16),  # Total PF (fw2 template)
            Field("1-0:32.7.0", 0x10D9, u16, 0.01, e16),  # Urms L1, V
            Field("1-0:52.7.0", 0x10DA, u16, 0.01, e16),
            Field("1-0:72.7.0", 0x10DB, u16, 0.01, e16),
            Field("1-0:31.7.0", 0x10DD, u16, 0.001, e16),  # Irms L1, A
            Field("1-0:51.7.0", 0x10DE, u16, 0.001, e16),
            Field("1-0:71.7.0", 0x10DF, u16, 0.001, e16),
            Field("1-0:14.7.0", 0x10F8, u16, 0.01, e16),  # Frequency, Hz
            Field("1-0:1.8.0", 0x1200, u64, en, e64),  # Total AP energy, low word first
            Field("1-0:21.8.0", 0x1204, u64, en, e64),  # AP energy L1
            Field("1-0:41.8.0", 0x1208, u64, en, e64),
            Field("1-0:61.8.0", 0x120C, u64, en, e64),
            Field("1-0:3.8.0", 0x1220, u64, en, e64),  # Total RP energy, kvarh
            Field("1-0:1.7.0", 0x1300, s32, pw, e32, "big"),  # Total P, W
            Field("1-0:21.7.0", 0x1302, s32, pw, e32, "big"),  # P L1
            Field("1-0:41.7.0", 0x1304, s32, pw, e32, "big"),
            Field("1-0:61.7.0", 0x1306, s32, pw, e32, "big"),
            Field("1-0:3.7.0", 0x1308, s32, pw, e32, "big"),  # Total Q, var
            Field("1-0:9.7.0", 0x1310, s32, pw, e32, "big"),  # Total S, VA
        ),
    )


PROFILES: dict[str, Profile] = {p.name: p for p in (_sdm630(), _wb_map3e())}
