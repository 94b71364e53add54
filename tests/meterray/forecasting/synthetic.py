"""A synthetic half-hourly load with known structure, shared by the forecasting tests."""
from __future__ import annotations

from datetime import date

import numpy as np

from meterray.forecasting.calendar import non_working
from meterray.forecasting.features import SLOTS, Series


def load(days: int, first: date = date(2025, 9, 1), seed: int = 1, temperature: bool = False) -> Series:
    """Office-like load: a daily shape, weekends and holidays at 40 %, a slow level drift, a temperature
    response (heating below 15 °C), and 3 % noise. A model of the structure beats a naive copy of
    one noisy day; a copy of yesterday also gets every Monday and Saturday wrong."""
    rng = np.random.default_rng(seed)
    hours = np.arange(SLOTS) / 2
    shape = 0.3 + 0.7 * np.exp(-((hours - 13) / 4.5) ** 2)
    temp = 10 + 8 * np.sin(np.arange(days * SLOTS) * 2 * np.pi / SLOTS - 2) + rng.normal(0, 2, days)[
        np.arange(days * SLOTS) // SLOTS] * 2
    values = np.empty(days * SLOTS)
    for d in range(days):
        day = first.fromordinal(first.toordinal() + d)
        level = 100 * (1 + 0.002 * d) * (0.4 if non_working(day) else 1.0)
        day_noise = 1 + 0.08 * rng.uniform(-1, 1)  # the day-to-day variation no model can know
        values[d * SLOTS:(d + 1) * SLOTS] = level * shape * day_noise
    if temperature:
        values *= 1 + 0.02 * np.maximum(0, 15 - temp)
    values *= 1 + rng.normal(0, 0.03, days * SLOTS)
    return Series(first, values, temp if temperature else None)
