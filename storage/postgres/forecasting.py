"""Forecasting's queries: the model registry (forecasting.models, migration 0014), devices by
organisation, and the one function that reads a device's half-hourly energy for the models.

`device_series` is the only place forecasting reads load data: today it derives half-hours from the
PostgreSQL archive (storage.postgres.consumption); reading the ClickHouse 30-min rollup instead changes
this function alone.
"""
from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import numpy as np

from meterray.consumption import Status
from meterray.forecasting.features import SLOTS, Series
from meterray.intervals import local_midnight_ms, zone
from storage.postgres.consumption import Metering, device_consumption

ACTIVE_IMPORT = "1-0:1.8.0"


async def device_series(conn: asyncpg.Connection | asyncpg.Pool, device: Metering, tz: str, first: date, days: int,
                        now_ms: int, modulus: float | None) -> Series:
    """Active-import kWh of each local half-hour of `days` days from `first`; NaN where missing or not
    yet begun (estimated half-hours count: the derivation's like-day and linear estimates)."""
    z = zone(tz)
    start_ms = local_midnight_ms(first, z)
    end_ms = local_midnight_ms(first + timedelta(days=days), z)
    slots, derived = await device_consumption(conn, device, ACTIVE_IMPORT, tz, start_ms, end_ms, now_ms, modulus)
    values = np.full(days * SLOTS, np.nan)
    for slot, e in zip(slots, derived.intervals, strict=True):
        # By local wall clock: a day with a DST shift keeps 48 places (the repeated hour's second pass
        # is dropped, the skipped hour stays NaN), as the model's days have 48 half-hours.
        hour, minute, fold = slot.wall
        i = (slot.day - first).days * SLOTS + hour * 2 + minute // 30
        if fold or not e.complete or e.status is Status.MISSING or e.energy is None or not 0 <= i < len(values):
            continue
        values[i] = e.energy
    return Series(first, values)


async def organisation_devices(conn: asyncpg.Connection | asyncpg.Pool, organisation_id: UUID) -> list[str]:
    return [r["id"] for r in await conn.fetch(
        "SELECT id FROM devices.devices WHERE organisation_id = $1 ORDER BY id", organisation_id)]


async def forecastable_devices(conn: asyncpg.Connection | asyncpg.Pool) -> list[str]:
    """Devices with an active-import register in their profile's vocabulary: every metered device."""
    return [r["id"] for r in await conn.fetch("SELECT id FROM devices.devices ORDER BY id")]


async def save_model(conn: asyncpg.Connection | asyncpg.Pool, fields: dict[str, Any], training_seconds: float) -> int:
    version: int = await conn.fetchval(
        """
        INSERT INTO forecasting.models (train_start, train_end, holdout_days, devices, training_rows, chosen, metrics,
                                        interval_quantiles, naive_error_ratios, model, training_seconds)
        VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10::jsonb, $11) RETURNING version
        """,
        fields["train_start"], fields["train_end"], fields["holdout_days"], fields["devices"],
        fields["training_rows"], fields["chosen"], json.dumps(fields["metrics"]), fields["interval_quantiles"],
        fields["naive_error_ratios"], None if fields["model"] is None else json.dumps(fields["model"]),
        training_seconds)
    return version


_COLUMNS = ("version, trained_at, train_start, train_end, holdout_days, devices, training_rows, chosen, metrics,"
            " interval_quantiles, naive_error_ratios, training_seconds")


async def latest_version(conn: asyncpg.Connection | asyncpg.Pool) -> int | None:
    v: int | None = await conn.fetchval("SELECT max(version) FROM forecasting.models")
    return v


async def model_row(conn: asyncpg.Connection | asyncpg.Pool, version: int, with_model: bool = True
                    ) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS}{', model' if with_model else ''} FROM forecasting.models"
                              " WHERE version = $1", version)
    if row is None:
        return None
    out = dict(row)
    out["metrics"] = json.loads(out["metrics"])
    if with_model:
        out["model"] = None if out["model"] is None else json.loads(out["model"])
    return out


async def models(conn: asyncpg.Connection | asyncpg.Pool, limit: int = 20) -> list[dict[str, Any]]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM forecasting.models ORDER BY version DESC LIMIT $1", limit)
    return [{**dict(r), "metrics": json.loads(r["metrics"])} for r in rows]
