"""Response models of the forecasting and recommendation endpoints."""
from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, Field


class ForecastPoint(BaseModel):
    start: datetime
    end: datetime
    energy: float | None = Field(description="kWh forecast for the half-hour (null: no history to forecast from)")
    lower: float | None
    upper: float | None


class ForecastOut(BaseModel):
    device_id: str | None = None
    organisation_id: str | None = None
    devices: int = 1
    devices_without_forecast: int = 0
    unit: str = "kWh"
    timezone: str
    issued_at: datetime
    horizon: int
    model_version: int
    method: str = Field(description="lightgbm, or seasonal_naive_weekly when the model did not beat it")
    interval: dict[str, float] = Field(description="the quantiles of the prediction interval")
    points: list[ForecastPoint]


class ModelOut(BaseModel):
    version: int
    trained_at: datetime
    train_start: date
    train_end: date
    holdout_days: int
    devices: int
    training_rows: int
    chosen: str
    metrics: dict[str, Any]
    interval_quantiles: list[float]
    training_seconds: float
