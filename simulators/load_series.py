"""Half-hourly energy of a simulated meter (simulators.meter_model), without running a simulator.

The meter's A+ counter is the exact integral of its load curve, so the energy of a half-hour is the
difference of the counter at its two ends: the same numbers the consumption derivation gets from a
simulated meter's readings, for any span (a year for the forecasting benchmark, in milliseconds).
"""
from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import numpy.typing as npt

from protocols.modbus.profiles import PROFILES
from simulators.meter_model import DAY_S, UTC_OFFSET_S, SimulatedMeter

HALF_HOUR_S = 1800


def half_hour_energy(device_id: str, first: date, days: int, profile: str = "") -> npt.NDArray[np.float64]:
    """kWh of each local (Moscow time) half-hour of `days` days from `first` (length days * 48)."""
    prof = PROFILES[profile] if profile else next(iter(PROFILES.values()))
    model = SimulatedMeter(device_id, prof)
    start = int((datetime(first.year, first.month, first.day) - datetime(1970, 1, 1)).total_seconds()) - UTC_OFFSET_S
    edges = [model.energy_since_install_kwh(start + i * HALF_HOUR_S) for i in range(days * DAY_S // HALF_HOUR_S + 1)]
    return np.diff(np.asarray(edges, dtype=np.float64))


def timestamps(first: date, days: int) -> list[datetime]:
    start = datetime(first.year, first.month, first.day)
    return [start + timedelta(seconds=i * HALF_HOUR_S) for i in range(days * DAY_S // HALF_HOUR_S)]
