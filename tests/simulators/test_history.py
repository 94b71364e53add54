"""The demo's history generator (simulators/history.py): the simulator's own model at past slots."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from meterray.quantities import QUANTITIES
from protocols.modbus.client import ModbusEndpoint
from protocols.modbus.profiles import PROFILES
from simulators import history

MOSCOW = "Europe/Moscow"
UNTIL = datetime(2026, 11, 20, 13, 47, 31, tzinfo=timezone.utc)
ENERGY = [q for q, spec in QUANTITIES.items() if spec.cumulative]


def test_every_slot_of_the_grid_once_with_every_quantity_of_the_profile_and_counters_that_only_rise() -> None:
    win = history.window(UNTIL, 2, 0, MOSCOW)
    last = int(datetime(2026, 11, 20, 13, 45, tzinfo=timezone.utc).timestamp() * 1000)  # the slot at or before UNTIL
    grid = [last - i * 300_000 for i in range(2 * 288)][::-1]
    for name in ("sdm630", "wb-map3e"):
        batches = list(history.history(f"hist-grid-{name}", name, win))
        assert [b.ts_ms for b in batches] == grid  # 576 slots, each once, in order, on the 5-min grid
        profile = {f.quantity for f in PROFILES[name].fields}
        assert all({v.quantity for v in b.values} == profile and len(b.values) == len(profile) for b in batches)
        assert all(b.source == history.SOURCE and all(v.quality == 0 for v in b.values) for b in batches)
        for q in set(ENERGY) & profile:
            series = [next(v.value for v in b.values if v.quantity == q) for b in batches]
            assert all(a <= b for a, b in zip(series, series[1:], strict=False)), q
        a_plus = [next(v.value for v in b.values if v.quantity == history.ENERGY) for b in batches]
        assert a_plus[-1] > a_plus[0]  # a business uses energy over two days
        # Power follows the daily load shape: the day's peak (local daytime) well above the night's base.
        power = {b.ts_ms: next(v.value for v in b.values if v.quantity == "1-0:16.7.0") for b in batches}
        local = {t: datetime.fromtimestamp(t / 1000, ZoneInfo(MOSCOW)).hour for t in power}
        night = max(p for t, p in power.items() if local[t] in (2, 3))
        day = max(p for t, p in power.items() if local[t] in (9, 10))
        assert day > 2 * night > 0
        volts = [v.value for b in batches for v in b.values if v.quantity == "1-0:32.7.0"]
        assert all(215 < u < 240 for u in volts)


def test_the_forecast_span_holds_a_plus_alone_from_local_midnight_and_stored_spans_are_left_out() -> None:
    win = history.window(UNTIL, 1, 3, MOSCOW)
    midnight = datetime(2026, 11, 17, tzinfo=ZoneInfo(MOSCOW))  # UNTIL is 16:47 on the 20th in Moscow
    assert win.energy_from_ms == int(midnight.timestamp() * 1000)
    batches = list(history.history("hist-span", "sdm630", win))
    assert [b.ts_ms for b in batches] == list(range(win.energy_from_ms, win.until_ms + 1, 300_000))
    older = [b for b in batches if b.ts_ms < win.detailed_from_ms]
    assert older and all([v.quantity for v in b.values] == [history.ENERGY] for b in older)
    assert len(batches) - len(older) == 288 == win.detailed_slots()
    # What the archive holds already is never produced again: A+ of the first day, every quantity's last hour.
    first_day_end = win.energy_from_ms + 86_400_000 - 300_000
    stored = {history.ENERGY: (win.energy_from_ms, first_day_end)}
    stored |= {f.quantity: (win.until_ms - 3_300_000, win.until_ms) for f in PROFILES["sdm630"].fields
               if f.quantity != history.ENERGY}
    again = list(history.history("hist-span", "sdm630", win, stored))
    assert again[0].ts_ms == first_day_end + 300_000  # the slots of a stored A+ span are skipped, not sent empty
    assert all(len(b.values) == 1 and b.values[0].quantity == history.ENERGY
               for b in again if b.ts_ms >= win.until_ms - 3_300_000)
    assert sum(len(b.values) for b in again) == sum(len(b.values) for b in batches) - 288 - 12 * 17


def test_history_ends_at_or_below_what_the_live_simulator_serves_next(simulator: list[dict]) -> None:
    """Continuity: the meters' live registers, read over Modbus from the simulator process, are where the
    history left them: at or above its last value, and no further than the meter's peak power allows."""
    picked = {m["profile"]: m for m in simulator}  # one meter of each profile
    assert set(picked) == {"sdm630", "wb-map3e"}
    for name, m in picked.items():
        win = history.window(datetime.now(timezone.utc), 1, 0, MOSCOW)
        last = list(history.history(m["device_id"], name, win))[-1]
        mine = {v.quantity: v.value for v in last.values}

        async def read(m: dict = m, name: str = name) -> dict[str, float]:
            async with ModbusEndpoint(m["host"], int(m["port"]), 2.0) as endpoint:
                values, _ = await endpoint.read_device(PROFILES[name], m["unit_id"])
            return {v.quantity: v.value for v in values}

        live = asyncio.run(read())
        read_at = datetime.now(timezone.utc)
        elapsed_h = (read_at - datetime.fromtimestamp(last.ts_ms / 1000, timezone.utc)).total_seconds() / 3600
        assert elapsed_h < 10 / 60
        for q in set(ENERGY) & set(mine):
            assert mine[q] <= live[q], (name, q, mine[q], live[q])
        # The same meter, not just a smaller number: at most 8 kW (the model's largest peak) more since then,
        # plus the register's last digit.
        assert live[history.ENERGY] - mine[history.ENERGY] <= 8 * (elapsed_h + 1 / 360) + 0.01
        assert live[history.ENERGY] - mine[history.ENERGY] >= 0
        assert timedelta(0) <= read_at - datetime.fromtimestamp(last.ts_ms / 1000, timezone.utc)
