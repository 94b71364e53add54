"""Past readings of simulated meters: the simulator's own model, read at past instants.

A simulated meter (simulators.meter_model) is a pure function of its device id and the wall clock: the
registers the Modbus simulator serves at time t are `SimulatedMeter.read(..., now=t)`. So the history of
a meter is that same read at past slots, decoded by the same profile decoder the ModbusShard uses
(protocols.modbus): the values carry the registers' own precision (float32 on an SDM630, scaled integers
on a WB-MAP3E), its energy registers never go down, and the last one of the history is at most what the
simulator serves later (the model integrates the load curve since a fixed install instant; rounding to
the register's precision keeps the order).

Two spans (a `Window`): every quantity for the recent part, and the A+ register alone (the one quantity
the forecasting model reads, storage.postgres.forecasting.ACTIVE_IMPORT) further back.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from meterray.domain import ReadingBatch, Value
from protocols.modbus.codec import decode_block
from protocols.modbus.planner import plan_blocks
from protocols.modbus.profiles import PROFILES
from simulators.meter_model import SimulatedMeter, window_block

STEP_S = 300  # the history's grid: every 5 minutes (under the consumption derivation's 10-min gap rule)
ENERGY = "1-0:1.8.0"  # A+ (active import), the register the forecast is trained on
SOURCE = "simulator-history"  # the readings' source: a backfill, not a poll

Spans = Mapping[str, tuple[int, int]]  # quantity -> (oldest ts_ms, newest ts_ms) already stored


@dataclass(frozen=True, slots=True)
class Window:
    """The slots of a history, in epoch milliseconds on a UTC-aligned grid of `step_ms`:
    [energy_from_ms, until_ms] for A+, [detailed_from_ms, until_ms] for every quantity (both inclusive)."""

    detailed_from_ms: int
    energy_from_ms: int
    until_ms: int
    step_ms: int

    def slots(self) -> range:
        return range(min(self.detailed_from_ms, self.energy_from_ms), self.until_ms + 1, self.step_ms)

    def detailed_slots(self) -> int:
        return max(0, (self.until_ms - self.detailed_from_ms) // self.step_ms + 1)


def window(until: datetime, days: int, energy_days: int, zone: str, step_s: int = STEP_S) -> Window:
    """The last `days` × (slots per day) slots at or before `until` for every quantity; for A+ alone, the
    slots from the local midnight `energy_days` days before `until`'s date (in `zone`) on, so that
    many whole local days lie before today (what forecast training reads). 0 days: none of that span."""
    step_ms = step_s * 1000
    until_ms = int(until.timestamp() * 1000)
    last = until_ms - until_ms % step_ms
    per_day = 86_400 // step_s
    detailed = last - (days * per_day - 1) * step_ms if days else last + step_ms
    if energy_days:
        local = until.astimezone(ZoneInfo(zone))
        midnight = datetime(local.year, local.month, local.day, tzinfo=ZoneInfo(zone)) - timedelta(days=energy_days)
        m_ms = int(midnight.timestamp() * 1000)
        energy = -(-m_ms // step_ms) * step_ms  # the first slot at or after that midnight
    else:
        energy = last + step_ms
    return Window(detailed, min(energy, detailed), last, step_ms)


def history(device_id: str, profile: str, win: Window, stored: Spans | None = None) -> Iterator[ReadingBatch]:
    """One batch per slot of `win` (oldest first) with what the meter served at that instant; values of a
    quantity whose stored span already covers the slot are left out (history already there is never
    rewritten), and a slot left with nothing is skipped."""
    prof = PROFILES[profile]
    meter = SimulatedMeter(device_id, prof)  # its own instance: the model is a function of time only
    every = plan_blocks(prof)  # the ModbusShard's own requests
    field = next(f for f in prof.fields if f.quantity == ENERGY)
    energy_block = window_block(prof, field.address, field.words)  # the one field's own request
    assert energy_block is not None  # the field is the profile's own
    energy_only = (energy_block,)
    spans = stored or {}
    for ts in win.slots():
        all_quantities = ts >= win.detailed_from_ms
        values: list[Value] = []
        for block in every if all_quantities else energy_only:
            words = meter.read(block.function_code, block.start, block.count, ts / 1000)
            decoded, _no_value = decode_block(block, words, prof.word_order)
            values.extend(decoded)
        keep = tuple(v for v in values if (all_quantities or v.quantity == ENERGY) and not _covered(spans, v, ts))
        if keep:
            yield ReadingBatch(device_id, ts, SOURCE, keep)


def _covered(spans: Spans, v: Value, ts: int) -> bool:
    span = spans.get(v.quantity)
    return span is not None and span[0] <= ts <= span[1]
