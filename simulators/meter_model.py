"""A simulated three-phase meter of a small business: deterministic, seeded by device id.

Load follows a daily curve (night base load, morning and evening peaks, quieter weekends) in
Moscow local time, scaled per day by a season term and a little day-to-day variation. The energy
counter is the exact integral of that curve since a fixed install instant, so the A+ register at
wall-clock time t is the same in every process and never goes down (until a `reset` fault, which
models a replaced meter). Instantaneous values carry a few per cent of deterministic noise that
the counters do not integrate: too small to matter over a poll interval.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from protocols.modbus.codec import encode_block
from protocols.modbus.planner import Block
from protocols.modbus.profiles import MODBUS_MAX_READ, Field, Profile

INSTALL_EPOCH_S = 1_704_056_400  # 2024-01-01T00:00 MSK: counters integrate from here
UTC_OFFSET_S = 3 * 3600  # the load curve follows Moscow local time (UTC+3, no DST)
DAY_S = 86_400
_FIRST_DAY = (INSTALL_EPOCH_S + UTC_OFFSET_S) // DAY_S  # local day number of the install
_M64 = (1 << 64) - 1

# Fraction of the device's peak power at local hours 0..24 (knot 24 = next midnight); linear in
# between. A shop/office: base load at night, opening ramp, morning peak, lunch dip, evening peak.
WEEKDAY_SHAPE = (0.22, 0.20, 0.19, 0.19, 0.20, 0.24, 0.38, 0.62, 0.88, 1.00, 0.97, 0.90, 0.80, 0.84,
                 0.86, 0.84, 0.82, 0.86, 0.95, 0.92, 0.70, 0.46, 0.32, 0.25, 0.22)
WEEKEND_SHAPE = (0.22, 0.20, 0.19, 0.19, 0.19, 0.20, 0.24, 0.32, 0.42, 0.52, 0.58, 0.60, 0.58, 0.55,
                 0.52, 0.50, 0.52, 0.58, 0.66, 0.64, 0.52, 0.40, 0.30, 0.25, 0.22)


class Fault(StrEnum):
    NONE = "none"
    TIMEOUT = "timeout"  # the request gets no answer
    EXCEPTION = "exception"  # answered with a Modbus exception code (2 or 4)
    DROP = "drop"  # the TCP connection is closed instead of answering
    RESET = "reset"  # counters restart from 0, once (a replaced meter); then back to none
    # A malformed answer: one register more than asked (a firmware or gateway fault). Nothing of
    # it can be decoded: the poll fails as bad_response and the raw words go to the dead letters.
    GARBAGE = "garbage"
    # The meter answers, but reports its "no value" pattern (the vendor's error value, NaN for
    # floats) for some quantities, as a WB-MAP3E does for Urms while a phase is not measured.
    NO_VALUE = "no_value"
    # The meter answers, but its registers stop refreshing: every read returns the values of the
    # moment of the fault (a hung measurement core, or a gateway answering from a stale cache).
    FROZEN = "frozen"


# Modbus application protocol v1.1b3 §7 exception codes a meter answers for a bad request.
ILLEGAL_FUNCTION, ILLEGAL_DATA_ADDRESS, ILLEGAL_DATA_VALUE = 1, 2, 3
# wirenboard/wb-mqtt-serial README "unsupported_value": "0xFFFE": what a Wiren Board device in
# continuous read mode returns for a register it does not implement inside a range read.
WB_UNSUPPORTED_VALUE = 0xFFFE


class MeterExceptionResponse(Exception):
    """The meter refuses the request with a Modbus exception code, as a real one would."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"exception {code}: {reason}")
        self.code = code


def has_no_value_pattern(field: Field) -> bool:
    """True when the meter can say "no value" for this field: a float (NaN) or a declared error value."""
    return field.dtype.is_float or field.error_value is not None


def _cumulative(shape: tuple[float, ...]) -> tuple[float, ...]:
    """Integral of the piecewise-linear shape from midnight to each knot, in peak-hours."""
    out = [0.0]
    for a, b in itertools.pairwise(shape):
        out.append(out[-1] + (a + b) / 2)
    return tuple(out)


_SHAPES = {False: (WEEKDAY_SHAPE, _cumulative(WEEKDAY_SHAPE)), True: (WEEKEND_SHAPE, _cumulative(WEEKEND_SHAPE))}


def _mix(x: int) -> int:
    """splitmix64 finaliser: a cheap, well-spread deterministic hash."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _unit(seed: int, k: int) -> float:
    """Deterministic noise in [-1, 1) for (seed, k)."""
    return _mix(seed ^ ((k * 0x632BE59BD9B4E019) & _M64)) / 2.0**63 - 1.0


def is_weekend(day: int) -> bool:
    return (day + 3) % 7 >= 5  # local day 0 = 1970-01-01, a Thursday


@dataclass(frozen=True, slots=True)
class MeterParams:
    seed: int
    peak_kw: float
    phase_split: tuple[float, float, float]
    voltage_offsets: tuple[float, float, float]
    pf_base: float
    initial_import_kwh: float  # A+ at the install instant
    export_kwh: float  # A- (a consumer: constant)
    initial_reactive_import_kvarh: float
    reactive_export_kvarh: float


@functools.cache
def params_for(device_id: str) -> MeterParams:
    seed = int.from_bytes(hashlib.blake2b(device_id.encode(), digest_size=8).digest(), "big")
    rng = random.Random(seed)
    split = [rng.uniform(0.8, 1.2) for _ in range(3)]
    total = sum(split)
    return MeterParams(
        seed=seed,
        peak_kw=rng.uniform(2.5, 8.0),
        phase_split=(split[0] / total, split[1] / total, split[2] / total),
        voltage_offsets=(rng.uniform(-4, 4), rng.uniform(-4, 4), rng.uniform(-4, 4)),
        pf_base=rng.uniform(0.90, 0.98),
        initial_import_kwh=rng.uniform(500, 20_000),
        export_kwh=round(rng.uniform(0, 5), 3),
        initial_reactive_import_kvarh=rng.uniform(100, 5_000),
        reactive_export_kvarh=round(rng.uniform(0, 50), 3),
    )


def day_factor(seed: int, day: int) -> float:
    """Season (more in winter) times ±8 % day-to-day variation."""
    season = 1.0 + 0.12 * math.cos(2 * math.pi * (day - 14) / 365.2425)
    return season * (1.0 + 0.08 * _unit(seed, day))


@functools.cache
def image_block(profile: Profile) -> Block:
    """One block spanning every field of the profile: the simulator's register image."""
    fields = tuple(sorted(profile.fields, key=lambda f: f.address))
    start = fields[0].address
    return Block(profile.function_code, start, max(f.end for f in fields) - start, fields)


@functools.lru_cache(maxsize=4096)
def window_block(profile: Profile, start: int, count: int) -> Block | None:
    """The smallest block holding every field that overlaps [start, start + count), or None.

    Cached: pollers ask for the same few windows over and over, and encoding only the fields a
    request touches keeps the per-request cost low.
    """
    end = start + count
    fields = tuple(sorted((f for f in profile.fields if f.address < end and f.end > start), key=lambda f: f.address))
    if not fields:
        return None
    lo = fields[0].address
    return Block(profile.function_code, lo, max(f.end for f in fields) - lo, fields)


class SimulatedMeter:
    """One device: its load, its counters and its fault state (mutable: a simulator)."""

    __slots__ = (
        "_cum",
        "_cum_day",
        "_reset_kwh",
        "_seen_tick",
        "_seen_values",
        "device_id",
        "exception_code",
        "fault",
        "no_value",
        "params",
        "profile",
    )

    def __init__(self, device_id: str, profile: Profile) -> None:
        self.device_id = device_id
        self.profile = profile
        self.params = params_for(device_id)
        self.fault = Fault.NONE
        self.exception_code = 2
        self.no_value: frozenset[str] = frozenset()  # quantities reported as "no value" (NO_VALUE fault)
        self._reset_kwh: float | None = None  # energy since install at the last reset
        self._cum_day = _FIRST_DAY
        self._cum = 0.0  # energy (kWh) from install to the start of local day _cum_day
        self._seen_tick = -1  # registers refresh once per second: the values of that second
        self._seen_values: dict[str, float | None] = {}

    # -- load and energy -------------------------------------------------------------------
    def _energy_before_day(self, day: int) -> float:
        first = _FIRST_DAY
        if day <= first:
            return 0.0
        if day < self._cum_day:  # asked about the past: start over (tests only)
            self._cum_day, self._cum = first, 0.0
        seed, peak = self.params.seed, self.params.peak_kw
        while self._cum_day < day:
            d = self._cum_day
            self._cum += peak * day_factor(seed, d) * _SHAPES[is_weekend(d)][1][-1]
            self._cum_day = d + 1
        return self._cum

    def load_fraction(self, now: float) -> float:
        """Noise-free load as a fraction of peak power at `now` (epoch seconds)."""
        local = now + UTC_OFFSET_S
        day = int(local // DAY_S)
        hours = (local - day * DAY_S) / 3600.0
        shape = _SHAPES[is_weekend(day)][0]
        i = min(int(hours), 23)
        frac = hours - i
        return day_factor(self.params.seed, day) * (shape[i] + frac * (shape[i + 1] - shape[i]))

    def energy_since_install_kwh(self, now: float) -> float:
        """Exact integral of the noise-free load from the install instant to `now`."""
        if now <= INSTALL_EPOCH_S:
            return 0.0
        local = now + UTC_OFFSET_S
        day = int(local // DAY_S)
        hours = (local - day * DAY_S) / 3600.0
        shape, cum = _SHAPES[is_weekend(day)]
        i = min(int(hours), 23)
        frac = hours - i
        within = cum[i] + frac * shape[i] + frac * frac / 2 * (shape[i + 1] - shape[i])
        return self._energy_before_day(day) + self.params.peak_kw * day_factor(self.params.seed, day) * within

    def values(self, now: float) -> dict[str, float]:
        """Every quantity the meter reports at `now`, keyed by OBIS code, in the vocabulary's units."""
        p = self.params
        tick = int(now)
        load = self.load_fraction(now)
        total_w = 1000.0 * p.peak_kw * load * (1.0 + 0.04 * _unit(p.seed ^ 0x1, tick))
        pf = min(0.995, p.pf_base + 0.01 * _unit(p.seed ^ 0x2, tick))
        tan_phi = math.tan(math.acos(pf))
        energy = self.energy_since_install_kwh(now)
        if self._reset_kwh is None:
            a_plus = p.initial_import_kwh + energy
            r_plus = p.initial_reactive_import_kvarh + energy * math.tan(math.acos(p.pf_base))
            a_minus, r_minus = p.export_kwh, p.reactive_export_kvarh
        else:  # a replaced meter: counts from 0 since the reset, exported nothing yet
            since = max(0.0, energy - self._reset_kwh)
            a_plus, r_plus, a_minus, r_minus = since, since * math.tan(math.acos(p.pf_base)), 0.0, 0.0
        # A consumer: power flows in (import, +), reactive power is inductive (+): see the sign
        # conventions in meterray.quantities.
        out: dict[str, float] = {
            "1-0:16.7.0": total_w,
            "1-0:131.7.0": total_w * tan_phi,
            "1-0:137.7.0": total_w / pf,
            "1-0:13.7.0": pf,
            "1-0:14.7.0": 50.0 + 0.03 * _unit(p.seed ^ 0x3, tick),
            "1-0:1.8.0": a_plus,
            "1-0:2.8.0": a_minus,
            "1-0:3.8.0": r_plus,
            "1-0:4.8.0": r_minus,
        }
        for n, (power_q, volt_q, curr_q, energy_q) in enumerate((
            ("1-0:36.7.0", "1-0:32.7.0", "1-0:31.7.0", "1-0:21.8.0"),
            ("1-0:56.7.0", "1-0:52.7.0", "1-0:51.7.0", "1-0:41.8.0"),
            ("1-0:76.7.0", "1-0:72.7.0", "1-0:71.7.0", "1-0:61.8.0"),
        )):
            share = p.phase_split[n]
            phase_w = total_w * share
            # Voltage sags a little under load; the offset is the feeder's, per device and phase.
            volts = 230.0 + p.voltage_offsets[n] - 3.0 * load + 0.6 * _unit(p.seed ^ (0x10 + n), tick)
            out[power_q] = phase_w
            out[volt_q] = volts
            out[curr_q] = phase_w / (volts * pf)
            out[energy_q] = a_plus * share
        return out

    # -- registers ---------------------------------------------------------------------------
    def read(self, function_code: int, start: int, count: int, now: float) -> list[int]:
        """Answer one read request like the real meter: the `count` words from `start` at `now`,
        or MeterExceptionResponse for a request the meter refuses (see `refusal`)."""
        refused = refusal(self.profile, function_code, start, count)
        if refused is not None:
            raise MeterExceptionResponse(*refused)
        words = self._words(start, count, now)
        if self.fault is Fault.GARBAGE:  # a malformed answer: one register too many (too few at 125)
            return words + [0xFFFF] if count < MODBUS_MAX_READ else words[:-1]
        return words

    def _words(self, start: int, count: int, now: float) -> list[int]:
        window = window_block(self.profile, start, count)
        if window is None:
            return [0] * count
        # Like a real meter, the registers refresh once per measurement cycle (1 s here): every
        # block read within that second sees the same values, computed once.
        tick = int(now)
        if tick != self._seen_tick and not (self.fault is Fault.FROZEN and self._seen_values):
            values: dict[str, float | None] = dict(self.values(tick))
            if self.fault is Fault.NO_VALUE:
                values.update(dict.fromkeys(self.no_value))
            self._seen_values, self._seen_tick = values, tick
        words = encode_block(window, self._seen_values, self.profile.word_order)
        lo, hi = max(start, window.start), min(start + count, window.end)
        out = [0] * (lo - start) + words[lo - window.start : hi - window.start] + [0] * (start + count - hi)
        if self.profile.max_hole:  # continuous read answers short holes: see refusal()
            for h_lo, h_hi in self.profile.holes(start, start + count):
                out[h_lo - start : h_hi - start] = [WB_UNSUPPORTED_VALUE] * (h_hi - h_lo)
        return out

    def registers(self, now: float) -> dict[int, int]:
        """The whole register image at `now`, address → word (fields only, for inspection)."""
        image = image_block(self.profile)
        words = self._words(image.start, image.count, now)
        return {f.address + i: words[f.address - image.start + i] for f in image.fields for i in range(f.words)}

    # -- faults ----------------------------------------------------------------------------
    def set_fault(self, fault: Fault, now: float, code: int = 2, quantities: Iterable[str] | None = None) -> None:
        """Put the meter in a fault state; `reset` acts at once and leaves the meter healthy.

        `quantities` (NO_VALUE only): which quantities read as "no value"; default every field
        whose register has such a pattern. ValueError for a quantity the profile cannot report so.
        """
        no_value: frozenset[str] = frozenset()
        if fault is Fault.NO_VALUE:
            able = {f.quantity for f in self.profile.fields if has_no_value_pattern(f)}
            no_value = frozenset(able if quantities is None else quantities)
            if not no_value or not no_value <= able:
                raise ValueError(
                    f"{self.profile.name} can report 'no value' only for {sorted(able) or 'nothing'}; "
                    f"asked for {sorted(no_value - able) or 'none'}"
                )
        if fault is not Fault.FROZEN:
            self._seen_tick = -1  # a fault changes what the registers hold (frozen: they keep it)
        if fault is Fault.RESET:
            self._reset_kwh = self.energy_since_install_kwh(now)
            self.fault = Fault.NONE
            return
        self.fault = fault
        self.exception_code = code
        self.no_value = no_value


@functools.lru_cache(maxsize=4096)
def refusal(profile: Profile, function_code: int, start: int, count: int) -> tuple[int, str] | None:
    """The exception a real meter answers this request with, or None when it answers it.

    - another function code than the profile's: 0x01 illegal function;
    - more registers than the meter's limit: 0x03 illegal data value. Modbus application protocol
      v1.1b3 §6.4 (read input registers; §6.3 the same for holding): a quantity outside the
      accepted range is exception 03. Eastron SDM630 protocol v1.8 §1.1 says a request over 80
      registers "prompts ... an exception response" without naming the code; 03 is the one the
      Modbus state diagram gives.
    - any address the profile does not declare (no field, no readable range): 0x02 illegal data
      address (Modbus v1.1b3 §6.4: start + quantity outside the device's addresses → 02; SDM630
      v1.8 §3.11: "Attempt to access an invalid address"). A device with continuous read
      (`max_hole` > 0, Wiren Board) answers holes of at most `max_hole` registers instead, with
      WB_UNSUPPORTED_VALUE in them.
    - a request that reads part of a multi-register value, for a profile with `alignment` > 1:
      0x02 (SDM630 v1.8 §3.11: "an attempt to read or write part of a floating point value"; the
      meter's answer to a single-register read, "an instrument type specific value", is not modelled).
    Cached: pollers send the same few requests over and over.
    """
    if function_code != profile.function_code:
        return ILLEGAL_FUNCTION, f"function {function_code} not supported (the meter uses {profile.function_code})"
    if count > profile.max_read_registers:
        return ILLEGAL_DATA_VALUE, f"{count} registers requested, the meter gives at most {profile.max_read_registers}"
    if start % profile.alignment or count % profile.alignment:
        return ILLEGAL_DATA_ADDRESS, f"0x{start:04X}+{count} reads part of a {profile.alignment}-register value"
    for lo, hi in profile.holes(start, start + count):
        if hi - lo > profile.max_hole:
            return ILLEGAL_DATA_ADDRESS, f"0x{lo:04X}..0x{hi - 1:04X} are not registers of {profile.name}"
    return None
