"""Validation of every reading against the device's own history (energy_domain.md section 3).

Pure rules, no I/O. A finding is a Quality flag kept with the value: a reading is never dropped and
its value never altered. `check` runs once per reading batch (one poll of one device), on the hot
path of the device processor (2,000 batches a second at 2,000 meters at 1 s), so per value it does
dict lookups and arithmetic only, and builds a new Value only for a value it must flag.

What is checked:
- order: a batch stamped at or before the newest one seen is a DUPLICATE if that timestamp was
  seen among the last RECENT_STAMPS batches (a redelivery: the store writes it once), else
  OUT_OF_ORDER. Neither moves the device's counters or its recent history.
- time: FUTURE_TIMESTAMP beyond FUTURE_TOLERANCE_MS after the processor's clock; against the
  receive time (when the source handed the record to Kafka): CLOCK_DRIFT when stamped ahead of it
  by more than CLOCK_DRIFT_MS (nothing is received before it is measured, so only a clock running
  ahead does that), LATE when received more than the device's late threshold after its stamp
  (store-and-forward, a backlog). A clock running behind looks exactly like late data from here
  and is reported as LATE.
- cumulative registers (energy): a decrease is negative consumption, COUNTER_DECREASE, classified
  as ROLLOVER (the previous value was near the register's maximum and the new one is small: MTX
  meters wrap at 1 000 000.00, jooby-docs mtx3/events.md CROSS_ZERO_ENT), METER_RESET (a drop to
  under a tenth, or a reset the device announced), SCALE_ERROR (a thousandth: Wh read as kWh), or
  otherwise SUSPECT (a meter or data error; the health state machine hears of it). An increase of
  about 1000x is a SCALE_ERROR (kWh read as Wh); one far above the device's own recent rate is a
  SPIKE. Neither feeds the rate, so one bad value does not teach the check to accept the next.
- frozen values: FROZEN when the same non-zero instantaneous values come FROZEN_MIN_REPEATS times
  in a row over at least FROZEN_MIN_SPAN_MS (a genuine zero, a disconnected load, is excluded;
  waymark MDM recipe: "same non-zero value across >= 3 consecutive intervals"). Counters are left
  out: an unchanged counter is simply no consumption.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from meterray.domain import Quality, ReadingBatch, Value
from meterray.quantities import QUANTITIES

FUTURE_TOLERANCE_MS = 5 * 60 * 1000
CLOCK_DRIFT_MS = 30_000  # energy_domain.md 2.2 suggests 30 s (the regulatory limit is UNVERIFIED)
LATE_MIN_MS = 60_000  # never LATE sooner than this: a busy pipeline delays records by seconds
LATE_INTERVALS = 3  # ... nor sooner than three of the device's intervals
RECENT_STAMPS = 8  # batch timestamps remembered to tell a duplicate from an out-of-order reading (checkpointed)
ROLLOVER_NEAR = 0.9  # previous value above 90 % of the register's top ...
ROLLOVER_SMALL = 0.1  # ... and the new one under 10 % of it: a wrap
MIN_REGISTER_DIGITS = 5  # registers hold at least 5 integer digits (99999 kWh); tops are powers of ten
RESET_BELOW = 0.1  # a drop to under a tenth of the previous value: reset or replacement
SCALE = 1000.0  # Wh vs kWh
SCALE_TOLERANCE = 0.1  # a ratio within 10 % of 1000 (or of 1/1000)
SPIKE_FACTOR = 10.0  # consumption over ten times the recent rate (or the floor below) ...
RATE_FLOOR_PER_MS = 1.0 / 3_600_000  # 1 kW in kWh per millisecond: a load switching on after a quiet spell is no spike
SPIKE_MIN_DELTA = 0.05  # ... and at least this much (kWh): float32 counters count in ~0.001 kWh steps
SPIKE_MIN_RELATIVE = 1e-5  # ... and at least this share of the register
RATE_ALPHA = 0.1  # recent rate: exponentially weighted over about ten readings
FROZEN_MIN_REPEATS = 2  # the same values again twice: three readings in a row
FROZEN_MIN_SPAN_MS = 10_000  # ... spanning at least this (a fast poll may read one meter cycle twice)

_CUMULATIVE = frozenset(obis for obis, q in QUANTITIES.items() if q.cumulative)
_CLASS_NAMES = {Quality.ROLLOVER: "rollover", Quality.METER_RESET: "meter reset or replacement",
                Quality.SCALE_ERROR: "scale error, Wh vs kWh", Quality.SUSPECT: "unexplained: suspect"}


@dataclass(slots=True)
class Memory:
    """What validation remembers of a device. `counters`: OBIS → (ts_ms, value, rate per ms or -1
    before the first increase); `recent`: the last RECENT_STAMPS batch timestamps; the frozen
    check keeps a fingerprint (sum and count of the non-zero instantaneous values) of the last batch."""

    counters: dict[str, tuple[int, float, float]] = field(default_factory=dict)
    recent: list[int] = field(default_factory=list)
    newest_ms: int | None = None
    fingerprint: float = 0.0
    fingerprint_n: int = 0
    repeats: int = 0
    repeating_since_ms: int | None = None
    reset_announced: bool = False

    def copy(self) -> Memory:
        return Memory(dict(self.counters), list(self.recent), self.newest_ms, self.fingerprint,
                      self.fingerprint_n, self.repeats, self.repeating_since_ms, self.reset_announced)

    def to_json(self) -> dict[str, Any]:
        return {"recent": self.recent, "newest": self.newest_ms, "fp": [self.fingerprint, self.fingerprint_n],
                "repeats": [self.repeats, self.repeating_since_ms], "reset": self.reset_announced}

    @classmethod
    def from_json(cls, counters: dict[str, Any], doc: dict[str, Any]) -> Memory:
        fp = doc.get("fp") or [0.0, 0]
        repeats = doc.get("repeats") or [0, None]
        return cls({q: (int(c[0]), float(c[1]), float(c[2]) if len(c) > 2 else -1.0) for q, c in counters.items()},
                   [int(t) for t in doc.get("recent") or []], doc.get("newest"), float(fp[0]), int(fp[1]),
                   int(repeats[0]), repeats[1], bool(doc.get("reset", False)))


@dataclass(frozen=True, slots=True)
class Findings:
    """What a batch told the health state machine, besides its flags."""

    batch: ReadingBatch  # the batch with its values flagged
    frozen: bool
    reversal: bool  # a counter went back and no rollover or reset explains it
    resets: tuple[str, ...]  # counters that went back: "quantity from a to b (class)", for the events
    clock_offset_ms: float | None
    flags: int  # every flag set on any value of the batch (OR)


def register_top(value: float) -> float:
    """The smallest power of ten above `value`, at least 10**MIN_REGISTER_DIGITS: where a register wraps."""
    if value <= 0:
        return 10.0 ** MIN_REGISTER_DIGITS
    return max(10.0 ** MIN_REGISTER_DIGITS, 10.0 ** math.ceil(math.log10(value) + 1e-12))


def classify_decrease(previous: float, value: float, announced: bool) -> Quality:
    """The class of a counter decrease, as Quality flags (without COUNTER_DECREASE itself)."""
    top = register_top(previous)
    if previous >= ROLLOVER_NEAR * top and 0 <= value <= ROLLOVER_SMALL * top:
        return Quality.ROLLOVER
    if value > 0 and abs(previous / value - SCALE) <= SCALE * SCALE_TOLERANCE:
        return Quality.SCALE_ERROR
    if announced or value <= RESET_BELOW * previous:
        return Quality.METER_RESET
    return Quality.SUSPECT


def check(memory: Memory, batch: ReadingBatch, now_ms: int, receive_ms: int | None,
          late_ms: int = LATE_MIN_MS) -> Findings:
    """Flag the batch's values and update `memory` (see the module's docstring for the rules)."""
    ts = batch.ts_ms
    base = 0
    if ts > now_ms + FUTURE_TOLERANCE_MS:
        base |= Quality.FUTURE_TIMESTAMP
    offset: float | None = None
    if receive_ms is not None and receive_ms > 0:
        offset = float(ts - receive_ms)
        if offset > CLOCK_DRIFT_MS:
            base |= Quality.CLOCK_DRIFT
        elif -offset > late_ms:
            base |= Quality.LATE
    newest = memory.newest_ms
    fresh = newest is None or ts > newest
    if not fresh:
        base |= Quality.DUPLICATE if ts in memory.recent else Quality.OUT_OF_ORDER
    counters = memory.counters
    cumulative = _CUMULATIVE
    values: list[Value] | None = None
    any_flags = base
    reversal = False
    resets: list[str] = []
    fp, fp_n = 0.0, 0
    for i, v in enumerate(batch.values):
        flags = v.quality | base
        q = v.quantity
        x = v.value
        if q in cumulative:
            if x < 0:
                flags |= Quality.SUSPECT  # a register that counts never holds a negative number
                reversal = True
            prev = counters.get(q)
            if prev is None:
                counters[q] = (ts, x, -1.0)
            elif ts > prev[0]:
                p_ts, p_x, rate = prev
                if x < p_x:
                    kind = classify_decrease(p_x, x, memory.reset_announced)
                    flags |= Quality.COUNTER_DECREASE | kind
                    reversal = reversal or kind == Quality.SUSPECT
                    resets.append(f"{q} went from {p_x} to {x} ({_CLASS_NAMES[kind]})")
                    counters[q] = (ts, x, rate)
                else:
                    delta = x - p_x
                    dt = ts - p_ts
                    if p_x > 0 and abs(x / p_x - SCALE) <= SCALE * SCALE_TOLERANCE:
                        flags |= Quality.SCALE_ERROR
                    elif rate >= 0 and delta > SPIKE_FACTOR * max(rate, RATE_FLOOR_PER_MS) * dt \
                            and delta > SPIKE_MIN_DELTA and delta > SPIKE_MIN_RELATIVE * x:
                        flags |= Quality.SPIKE
                    else:
                        r = delta / dt
                        rate = r if rate < 0 else rate + RATE_ALPHA * (r - rate)
                    counters[q] = (ts, x, rate)
        elif x != 0.0:
            fp += x
            fp_n += 1
        if flags != v.quality:
            if values is None:
                values = list(batch.values)
            values[i] = Value(q, x, v.unit, flags)
            any_flags |= flags
    frozen = False
    if fresh:
        if memory.reset_announced and resets:
            memory.reset_announced = False
        if fp_n and fp == memory.fingerprint and fp_n == memory.fingerprint_n:
            memory.repeats += 1
            since = memory.repeating_since_ms if memory.repeating_since_ms is not None else ts
            frozen = memory.repeats >= FROZEN_MIN_REPEATS and ts - since >= FROZEN_MIN_SPAN_MS
        else:
            memory.repeats = 0
            memory.repeating_since_ms = ts
        memory.fingerprint, memory.fingerprint_n = fp, fp_n
        memory.newest_ms = ts
        recent = memory.recent
        recent.append(ts)
        if len(recent) > RECENT_STAMPS:
            del recent[0]
    elif ts not in memory.recent:  # remembered too, so its own redelivery is a duplicate
        memory.recent.append(ts)
        if len(memory.recent) > RECENT_STAMPS:
            del memory.recent[0]
    if frozen:
        if values is None:
            values = list(batch.values)
        for i, v in enumerate(values):
            if v.value != 0.0 and v.quantity not in cumulative:
                values[i] = Value(v.quantity, v.value, v.unit, v.quality | Quality.FROZEN)
        any_flags |= Quality.FROZEN
    out = batch if values is None else ReadingBatch(batch.device_id, ts, batch.source, tuple(values))
    return Findings(out, frozen, reversal, tuple(resets), offset, any_flags)
