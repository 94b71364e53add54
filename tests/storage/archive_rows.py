"""Rows for storage.postgres.readings.ReadingsWriter, built in one place for the consumption tests.

The writer's row holds the timestamp as a datetime on this branch and as UTC epoch milliseconds on
main since c62c910 (an exact COPY of integers); the row is built for whichever the writer declares,
so these tests pass on both sides of the merge. Once merged, `row` can take milliseconds only.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, get_args

from storage.postgres.consumption import to_ms
from storage.postgres.readings import ReadingRow

_TS_AS_MS = get_args(ReadingRow)[2] is int


def row(device_id: str, quantity: str, ts: datetime, value: float, unit: str = "kWh", quality: int = 0,
        source: str = "test") -> Any:
    return (device_id, quantity, to_ms(ts) if _TS_AS_MS else ts, value, unit, quality, source)
