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
    value", set only where the vendor declares one: a field without it has no "no value" pattern,
    so every raw value is a value (an s16 of 0xFFFF is -1). Wiren Board declares all ones on
    unsigned channels and the maximum (0x7FFF, 0x7FFFFFFF) on signed ones. `word_order`
    overrides the profile's order for this field only, for meters whose datasheet mixes orders
    (WB-MAP3E does: u32/s32 high word first, u64 energies low word first).
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
    def wrap_value(self) -> float | None:
        """The value at which a counter in this register starts again from 0: an unsigned integer
        register of n bits holds at most 2^n - 1 raw units, so one more unit reads 0 (2^n × scale).
        None for a float32 register: it does not wrap, it only loses resolution."""
        if self.dtype in (DType.U16, DType.U32, DType.U64):
            return float(1 << (16 * self.dtype.words)) * self.scale
        return None

    @property
    def end(self) -> int:
        """First address after this field."""
        return self.address + self.dtype.words


@dataclass(frozen=True, slots=True)
class Profile:
    """A meter model: function code, default word order, request size limit and fields.

    What the meter answers: every register of a field, and every register of `readable_ranges`
    (`(start, end)`, end exclusive: registers the vendor documents although no field maps them).
    A request that touches any other address gets exception 0x02 from a real meter, so the
    planner reads through such an undeclared *hole* only when it is at most `max_hole` registers
    long. `max_hole` is 0 unless the device is known to answer holes (Wiren Board's continuous
    read mode: at most WB_CONTINUOUS_READ_MAX_HOLE, and only once the mode is switched on).
    `alignment` > 1: the meter answers only requests that start at a multiple of it and read a
    multiple of it (Eastron: 2, one float32 per register pair); every field must be aligned too.
    """

    name: str
    function_code: int
    word_order: WordOrder
    max_read_registers: int
    fields: tuple[Field, ...]
    readable_ranges: tuple[tuple[int, int], ...] = ()
    max_hole: int = 0
    alignment: int = 1
    _declared: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)
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
        if not 0 <= self.max_hole < self.max_read_registers:
            raise ValueError(f"{p}: max_hole must be 0..max_read_registers-1, got {self.max_hole}")
        if self.alignment not in (1, 2, 4):
            raise ValueError(f"{p}: alignment must be 1, 2 or 4 registers, got {self.alignment}")
        for f in self.fields:
            if f.address % self.alignment or f.words % self.alignment:
                raise ValueError(f"{p}: {f.quantity} at 0x{f.address:04X} ({f.dtype}) is not aligned to "
                                 f"{self.alignment} registers; check the datasheet address")
        object.__setattr__(self, "_declared", _merge([(f.address, f.end) for f in self.fields]
                                                     + list(self.readable_ranges)))
        # Hashed on every poll (plan cache key): compute once, the table is frozen.
        object.__setattr__(
            self,
            "_hash",
            hash((self.name, self.function_code, self.word_order, self.max_read_registers, self.fields,
                  self.readable_ranges, self.max_hole, self.alignment)),
        )

    def __hash__(self) -> int:
        return self._hash

    def holes(self, start: int, end: int) -> list[tuple[int, int]]:
        """The undeclared runs `(lo, hi)` (hi exclusive) inside `[start, end)`: addresses that are in
        no field and no readable range, so a meter without continuous read answers them with 0x02."""
        out: list[tuple[int, int]] = []
        pos = start
        for lo, hi in self._declared:
            if hi <= pos:
                continue
            if lo >= end:
                break
            if lo > pos:
                out.append((pos, lo))
            pos = max(pos, hi)
            if pos >= end:
                break
        if pos < end:
            out.append((pos, end))
        return out

    def field_for(self, quantity: str) -> Field:
        for f in self.fields:
            if f.quantity == quantity:
                return f
        raise KeyError(f"profile {self.name!r} has no field for {quantity!r}")


def _merge(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted, non-overlapping, non-touching union of `(start, end)` ranges."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


# wirenboard/wb-mqtt-serial src/modbus_common.h MAX_HOLE_CONTINUOUS_16_BIT_REGISTERS: with
# enable_wb_continuous_read the driver reads through at most 10 undeclared registers; without it,
# its default max_reg_hole is 0 (README "max_reg_hole").
WB_CONTINUOUS_READ_MAX_HOLE = 10

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
    """Eastron SDM630 v2: FC04, IEEE-754 float32, high word first (SDM630 Modbus protocol v1.8 §1.1
    "Most significant register first (Default)", input register table §1.2.1; nmakel/sdm_modbus
    sdm.py SDM630 registers, meter.py: wordorder = byteorder = Endian.Big).

    Powers are signed floats (active power: import +, export −), so they carry the signed
    codes of meterray.quantities. Floats need no error value: a NaN/inf is "no value" already.
    """
    f = DType.F32
    return Profile(
        name="sdm630",
        function_code=4,
        word_order="big",
        # Protocol v1.8 §1.1: "a maximum of 40 values in a single transaction; therefore the maximum
        # number of registers requestable is 80. Exceeding this limit prompts ... an exception response."
        max_read_registers=80,
        fields=(
            Field("1-0:32.7.0", 0x0000, f),  # 30001 phase 1 line to neutral volts, V
            Field("1-0:52.7.0", 0x0002, f),  # 30003 phase 2
            Field("1-0:72.7.0", 0x0004, f),  # 30005 phase 3
            Field("1-0:31.7.0", 0x0006, f),  # 30007 phase 1 current, A
            Field("1-0:51.7.0", 0x0008, f),  # 30009
            Field("1-0:71.7.0", 0x000A, f),  # 30011
            Field("1-0:36.7.0", 0x000C, f),  # 30013 phase 1 power, W, signed
            Field("1-0:56.7.0", 0x000E, f),  # 30015
            Field("1-0:76.7.0", 0x0010, f),  # 30017
            Field("1-0:16.7.0", 0x0034, f),  # 30053 total system power, W, signed
            Field("1-0:137.7.0", 0x0038, f),  # 30057 total system volt amps, VA
            Field("1-0:131.7.0", 0x003C, f),  # 30061 total system VAr, signed
            Field("1-0:13.7.0", 0x003E, f),  # 30063 total system power factor
            Field("1-0:14.7.0", 0x0046, f),  # 30071 frequency of supply voltages, Hz
            Field("1-0:1.8.0", 0x0048, f),  # 30073 import Wh since last reset, in kWh
            Field("1-0:2.8.0", 0x004A, f),  # 30075 export kWh
            Field("1-0:3.8.0", 0x004C, f),  # 30077 import kVArh
            Field("1-0:4.8.0", 0x004E, f),  # 30079 export kVArh
        ),
        # The meter answers every register 0x0000..0x004F (per-phase VA/VAr/PF/angles and averages
        # fill the gap 0x0012..0x0033); sdm_modbus reads exactly this range as one request (its
        # batch 1). So the whole map is one request of 80 registers, the meter's limit.
        readable_ranges=((0x0000, 0x0050),),
        # Protocol v1.8 §1.1: "All register read requests ... must specify an even number of registers";
        # §3.11: exception 02 for "an attempt to read or write part of a floating point value".
        alignment=2,
    )


def _wb_map3e_fw2() -> Profile:
    """Wiren Board WB-MAP3E, current firmware (fw2): FC04 scaled integers.

    Every address, type, scale, word order and error value below is the one of
    wirenboard/wb-mqtt-serial templates/config-map3e-fw2.json (device "WB-MAP3E fw2", group g-wb,
    signatures MAP3E fw 2.0.0 and WB-MAP3E; "max_read_registers": 60), channel named in each comment.

    Word order: the template marks only the u64 energy counters "little_endian" (low word first);
    every other multi-register channel (u32 Urms/Irms, s32 P/Q/S) has wb-mqtt-serial's default,
    big_endian (README: "word_order": "big_endian" (по умолчанию)). So the profile default is "big"
    and the counters override it.
    Error values: only where the template declares one. Of the channels mapped here that is Urms
    (u32, "error_value": "0xFFFFFFFF"); Irms, P/Q/S, PF, frequency and energies declare none, so
    every raw pattern there is a value (an s32 power of 0xFFFFFFFF is -1 LSB = -5.12 mW).
    Holes: the template sets "enable_wb_continuous_read", under which wb-mqtt-serial reads through
    up to 10 undeclared registers, but only after writing 1 to holding register 114 (src/wb_registers.cpp
    CONTINUOUS_READ_REGISTER_ADDRESS, src/modbus_common.cpp EnableWbContinuousRead). meterray never
    writes to a meter, so the mode is off and max_hole stays 0; readable_ranges (registers the
    template declares as channels) already let the planner merge the map into 5 requests, the same
    number continuous read would give here.
    """
    u16, s16, u32, s32, u64 = DType.U16, DType.S16, DType.U32, DType.S32, DType.U64
    v, a = 1.52588e-7, 2.44141e-7  # V and A per LSB of Urms / Irms (u32)
    pw = 0.00512  # W, var, VA per LSB of P/Q/S (s32)
    en = 1e-5  # kWh, kvarh per LSB of the energy counters (u64)
    lo: WordOrder = "little"
    return Profile(
        name="wb-map3e",
        function_code=4,
        word_order="big",
        max_read_registers=60,
        fields=(
            Field("1-0:13.7.0", 0x10BC, s16, 0.001),  # "Total PF"
            Field("1-0:14.7.0", 0x10F8, u16, 0.01),  # "Frequency", Hz
            Field("1-0:1.8.0", 0x1200, u64, en, word_order=lo),  # "Total AP energy", kWh
            Field("1-0:21.8.0", 0x1204, u64, en, word_order=lo),  # "AP energy L1"
            Field("1-0:41.8.0", 0x1208, u64, en, word_order=lo),  # "AP energy L2"
            Field("1-0:61.8.0", 0x120C, u64, en, word_order=lo),  # "AP energy L3"
            Field("1-0:2.8.0", 0x1210, u64, en, word_order=lo),  # "Total AN energy", kWh
            Field("1-0:3.8.0", 0x1220, u64, en, word_order=lo),  # "Total RP energy", kvarh
            Field("1-0:4.8.0", 0x1230, u64, en, word_order=lo),  # "Total RN energy", kvarh
            Field("1-0:16.7.0", 0x1300, s32, pw),  # "Total P", W
            Field("1-0:36.7.0", 0x1302, s32, pw),  # "P L1"
            Field("1-0:56.7.0", 0x1304, s32, pw),  # "P L2"
            Field("1-0:76.7.0", 0x1306, s32, pw),  # "P L3"
            Field("1-0:131.7.0", 0x1308, s32, pw),  # "Total Q", var
            Field("1-0:137.7.0", 0x1310, s32, pw),  # "Total S", VA
            Field("1-0:32.7.0", 0x1410, u32, v, 0xFFFF_FFFF),  # "Urms L1", V
            Field("1-0:52.7.0", 0x1412, u32, v, 0xFFFF_FFFF),  # "Urms L2"
            Field("1-0:72.7.0", 0x1414, u32, v, 0xFFFF_FFFF),  # "Urms L3"
            Field("1-0:31.7.0", 0x1416, u32, a),  # "Irms L1", A
            Field("1-0:51.7.0", 0x1418, u32, a),  # "Irms L2"
            Field("1-0:71.7.0", 0x141A, u32, a),  # "Irms L3"
        ),
        readable_ranges=(
            (0x10BC, 0x10C0),  # "Total PF", "PF L1".."PF L3" (s16)
            (0x10F8, 0x10FC),  # "Frequency", "Phase angle L1".."L3"
            (0x10FD, 0x1100),  # "Voltage angle L1".."L3"
            (0x1200, 0x1240),  # AP, AN, RP, RN energy: total, L1..L3 (u64 each)
            (0x1300, 0x1318),  # P, Q, S: total, L1..L3 (s32 each)
            (0x1410, 0x141F),  # "Urms L1".."L3", "Irms L1".."L3" (u32), "U L1-L2".."U L3-L1" (u16)
        ),
        max_hole=0,
    )


def _wb_map3e_fw1() -> Profile:
    """Wiren Board WB-MAP3E with its legacy firmware: wirenboard/wb-mqtt-serial
    templates/config-map3e.json (group g-wb-old, "max_read_registers": 60, no continuous read).

    A different map from fw2: u16 Urms/Irms at 0x10D9../0x10DD.., P/Q/S ×0.00032 W and energy
    ×3.125e-6 kWh (fw2: ×0.00512 and ×1e-5), no "Total PF", no export counters. The template
    declares no error value on any channel mapped here. Word order as in fw2: big by default,
    the u64 counters "little_endian".
    """
    u16, s32, u64 = DType.U16, DType.S32, DType.U64
    pw = 0.00032
    en = 3.125e-6
    lo: WordOrder = "little"
    return Profile(
        name="wb-map3e-fw1",
        function_code=4,
        word_order="big",
        max_read_registers=60,
        fields=(
            Field("1-0:32.7.0", 0x10D9, u16, 0.01),  # "Urms L1", V
            Field("1-0:52.7.0", 0x10DA, u16, 0.01),  # "Urms L2"
            Field("1-0:72.7.0", 0x10DB, u16, 0.01),  # "Urms L3"
            Field("1-0:31.7.0", 0x10DD, u16, 0.001),  # "Irms L1", A
            Field("1-0:51.7.0", 0x10DE, u16, 0.001),  # "Irms L2"
            Field("1-0:71.7.0", 0x10DF, u16, 0.001),  # "Irms L3"
            Field("1-0:14.7.0", 0x10F8, u16, 0.01),  # "Frequency", Hz
            Field("1-0:1.8.0", 0x1200, u64, en, word_order=lo),  # "Total AP energy", kWh
            Field("1-0:21.8.0", 0x1204, u64, en, word_order=lo),  # "AP energy L1"
            Field("1-0:41.8.0", 0x1208, u64, en, word_order=lo),  # "AP energy L2"
            Field("1-0:61.8.0", 0x120C, u64, en, word_order=lo),  # "AP energy L3"
            Field("1-0:3.8.0", 0x1220, u64, en, word_order=lo),  # "Total RP energy", kvarh
            Field("1-0:16.7.0", 0x1300, s32, pw),  # "Total P", W
            Field("1-0:36.7.0", 0x1302, s32, pw),  # "P L1"
            Field("1-0:56.7.0", 0x1304, s32, pw),  # "P L2"
            Field("1-0:76.7.0", 0x1306, s32, pw),  # "P L3"
            Field("1-0:131.7.0", 0x1308, s32, pw),  # "Total Q", var
            Field("1-0:137.7.0", 0x1310, s32, pw),  # "Total S", VA
        ),
        readable_ranges=(
            (0x10BD, 0x10C0),  # "PF L1".."PF L3"
            (0x10D9, 0x10DC),  # "Urms L1".."L3"
            (0x10DD, 0x10E0),  # "Irms L1".."L3"
            (0x10F8, 0x10FC),  # "Frequency", "Phase angle L1".."L3"
            (0x10FD, 0x1100),  # "Voltage angle L1".."L3"
            (0x1200, 0x1210),  # AP energy total, L1..L3
            (0x1220, 0x1230),  # RP energy total, L1..L3
            (0x1300, 0x1318),  # P, Q, S: total, L1..L3
        ),
    )


PROFILES: dict[str, Profile] = {p.name: p for p in (_sdm630(), _wb_map3e_fw2(), _wb_map3e_fw1())}


def wrap_value(profile: str, quantity: str) -> float | None:
    """The value at which `profile`'s register of `quantity` starts again from 0 (Field.wrap_value);
    None for a profile the code does not know, a quantity it lacks, or a register that does not wrap."""
    known = PROFILES.get(profile)
    field = next((f for f in known.fields if f.quantity == quantity), None) if known else None
    return field.wrap_value if field else None
