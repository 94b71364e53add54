"""Put half-hourly observations on the whole-day grid a Series needs (pure: parsed rows in)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import numpy as np

from meterray.forecasting.features import SLOTS, Series

HALF_HOUR = timedelta(minutes=30)


class GridError(ValueError):
    """The observations are not a half-hourly series (a timestamp off the half-hour grid, too few rows)."""


def on_grid(timestamps: Sequence[datetime], values: Sequence[float], temperature: Sequence[float] | None = None,
            extras: Mapping[str, Sequence[float]] | None = None) -> Series:
    """A Series from local clock times (naive, or aware: their own wall clock is used) at :00 and :30.

    The series starts at the first timestamp's midnight and ends at the last one's day end; half-hours
    with no row are NaN (missing, never filled); a repeated timestamp (a clock going back) keeps the
    later row. Each column may be NaN where unknown."""
    if not timestamps:
        raise GridError("no rows")
    local = [t.replace(tzinfo=None) for t in timestamps]
    for t in local:
        if t.minute % 30 or t.second or t.microsecond:
            raise GridError(f"{t.isoformat()} is not on the half-hour grid (:00 or :30)")
    first = min(local).date()
    days = (max(local).date() - first).days + 1
    n = days * SLOTS
    start = datetime(first.year, first.month, first.day)
    idx = np.array([int((t - start) / HALF_HOUR) for t in local])

    def place(col: Sequence[float]) -> np.ndarray:
        out = np.full(n, np.nan)
        out[idx] = np.asarray(col, dtype=np.float64)
        return out

    return Series(first, place(values), None if temperature is None else place(temperature),
                  tuple((k, place(v)) for k, v in (extras or {}).items()))
