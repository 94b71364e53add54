"""Response models of the monitoring API (separate from storage rows)."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


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


class ReadingOut(BaseModel):
    quantity: str
    name: str
    ts: datetime
    value: float
    unit: str
    quality: int


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
