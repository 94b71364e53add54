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
    reasons: list[str] = Field(default_factory=list, description="reason codes of the status, e.g. [\"timeout\"]")
    link: str = Field("unknown", description="liveness of the link: unknown, up, down")
    data: str = Field("unknown", description="freshness of the data: unknown, fresh, frozen, missing")
    last_success: datetime | None = None


class Transition(BaseModel):
    ts: datetime
    status: str
    previous: str
    reasons: list[str]
    reason: str


class DeviceHealth(BaseModel):
    device_id: str
    status: str = Field(description="unknown, online, degraded, stale or offline")
    reasons: list[str] = Field(description="reason codes of the status (meterray.health.Reason)")
    link: str = Field(description="liveness of the link: unknown, up (the last exchange succeeded), down")
    data: str = Field(description="freshness of the data: unknown, fresh, frozen, missing")
    last_seen: datetime | None = Field(description="the device last answered or reported")
    last_success: datetime | None = Field(description="the last readings")
    consecutive_failures: int
    error_ratio: float = Field(description="share of failed polls, exponentially weighted over about 10")
    clock_offset_s: float | None = Field(description="reading timestamp minus the time it was received")
    last_failure_kind: str | None = None
    last_failure: str | None = None
    last_failure_at: datetime | None = None
    updated_at: datetime | None = Field(None, description="when the device processor last stored this state")
    transitions: list[Transition] = Field(description="status transitions, newest first (at most 50)")


class HealthSummary(BaseModel):
    devices: int
    by_status: dict[str, int] = Field(description="devices per status, every status listed")
    by_reason: dict[str, int] = Field(description="devices per active reason code")


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


class EnergyOut(BaseModel):
    start: datetime = Field(description="local time of the device, with its UTC offset")
    end: datetime
    energy: float | None = Field(description="energy in `unit`; null when missing")
    status: str = Field(description="actual, estimated or missing; for sums also partial (some half-hours missing)")
    methods: list[str] = Field(description="how estimated parts were estimated: linear, like_day; [] = measured")
    complete: bool = Field(description="false when the readings start or end inside it (the energy covers part)")
    half_hours: int = Field(description="half-hours summed into it")
    quality: int = Field(description="bitmask of meterray.domain.Quality flags of the readings and the estimate")
    quality_flags: list[str]


class GapOut(BaseModel):
    start: datetime
    end: datetime
    half_hours: int
    method: str | None = Field(description="how it was filled: linear, like_day; null = left missing")


class CounterDropOut(BaseModel):
    ts: datetime = Field(description="the first reading after the drop")
    kind: str = Field(description="rollover (register wrapped), reset (counter started again: replacement) "
                                  "or noise (a small drop, counted as no advance)")


class ConsumptionOut(BaseModel):
    device_id: str
    quantity: str
    unit: str
    interval: str
    timezone: str
    start: datetime
    end: datetime
    total: float = Field(description="sum of the energies shown (missing ones count 0)")
    intervals: list[EnergyOut]
    gaps: list[GapOut] = Field(description="half-hours without measured energy in the range")
    counter_drops: list[CounterDropOut]
