"""Response models of the monitoring API (separate from storage rows)."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class DeviceOut(BaseModel):
    id: str
    name: str
    protocol: str
    profile: str
    status: str
    last_seen: datetime | None
    last_failure_kind: str | None = None
    last_failure: str | None = None
    last_failure_at: datetime | None = None


class DevicePage(BaseModel):
    devices: list[DeviceOut]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null on the last page")


class ReadingOut(BaseModel):
    quantity: str
    name: str
    ts: datetime
    value: float
    unit: str
    quality: int = Field(description="bitmask of meterray.domain.Quality flags; 0 = OK")
    quality_flags: list[str] = Field(description="the same flags by name, e.g. [\"COUNTER_DECREASE\"]; [] = OK")


class CurrentReadings(BaseModel):
    device_id: str
    readings: list[ReadingOut]


class ReadingHistory(BaseModel):
    device_id: str
    quantity: str | None
    start: datetime
    end: datetime
    readings: list[ReadingOut]
    truncated: bool
