"""Partner records → readings or device status, by a path's mapping (meterray.partners).

Pure: records in, (reading batches, failures, refused records with their reason) out. Nothing is
dropped silently: a record that cannot be mapped (no such device, no timestamp, a value that is no
number, an OBIS code in a unit that does not convert) is refused with a reason, and the caller
dead-letters it. Readings of one device at one instant become one batch, as a meter's poll does.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from meterray.domain import FailureKind, PollFailure, ReadingBatch, Value
from meterray.partners import ReadingMapping, StatusMapping, unit_factor
from meterray.quantities import QUANTITIES
from protocols.http.documents import lookup

EPOCH_MS_ABOVE = 100_000_000_000  # a bare number above this is epoch milliseconds (year 5138 in seconds)
_ISO_LIKE = re.compile(r"\d{4}-").match  # a date, not a number: skip float()


class RecordError(ValueError):
    """Why one record cannot be mapped."""


@dataclass(slots=True)
class Mapped:
    batches: list[ReadingBatch] = field(default_factory=list)
    failures: list[PollFailure] = field(default_factory=list)  # device status the partner reports
    refused: list[tuple[str | None, bytes, str]] = field(default_factory=list)  # (device id, raw record, reason)
    readings: int = 0
    max_ts_ms: int | None = None


def map_records(records: Sequence[Any], readings: ReadingMapping | None, status: StatusMapping | None,
                devices: Mapping[str, str], source: str) -> Mapped:
    out = Mapped()
    by_key: dict[tuple[str, int], dict[str, Value]] = {}
    stamps: dict[Any, int] = {}  # a page repeats each timestamp for every meter and quantity: parse it once
    for record in records:
        device_id = None
        try:
            if not isinstance(record, dict):
                raise RecordError(f"a record must be an object, got {type(record).__name__}")
            m = readings or status
            assert m is not None
            device_id = _device(record, m.device, devices)
            raw_ts = lookup(record, m.timestamp)
            ts = stamps.get(raw_ts) if isinstance(raw_ts, (str, int, float)) else None
            if ts is None:
                ts = timestamp_ms(raw_ts, m.timestamp)
                if isinstance(raw_ts, (str, int, float)) and len(stamps) < 100_000:
                    stamps[raw_ts] = ts
            if status is not None:
                item = _status(record, status, device_id, ts, source)
                (out.failures if isinstance(item, PollFailure) else out.batches).append(item)  # type: ignore[arg-type]
            else:
                assert readings is not None
                values = by_key.setdefault((device_id, ts), {})
                for v in _values(record, readings):
                    if v.quantity in values:
                        raise RecordError(f"{v.quantity} of {device_id} at {ts} ms appears twice")
                    values[v.quantity] = v
            out.max_ts_ms = ts if out.max_ts_ms is None else max(out.max_ts_ms, ts)
        except RecordError as err:
            out.refused.append((device_id, _raw(record), str(err)))
    for (device_id, ts), values in by_key.items():
        if values:
            out.batches.append(ReadingBatch(device_id, ts, source, tuple(values.values())))
            out.readings += len(values)
    return out


def _device(record: dict[str, Any], path: str, devices: Mapping[str, str]) -> str:
    ext = lookup(record, path)
    if ext is None or ext == "":
        raise RecordError(f"no device id at {path!r}")
    device_id = devices.get(str(ext))
    if device_id is None:
        raise RecordError(f"unknown device {str(ext)[:80]!r}: not in this partner's devices")
    return device_id


def timestamp_ms(raw: Any, path: str = "timestamp") -> int:
    """ISO 8601 (naive means UTC), or epoch seconds / milliseconds (a number or a numeric string)."""
    if raw is None or raw == "" or isinstance(raw, bool):
        raise RecordError(f"no timestamp at {path!r}")
    if isinstance(raw, str):
        try:
            if _ISO_LIKE(raw):
                raise ValueError(raw)
            raw = float(raw)
        except ValueError:
            try:
                dt = datetime.fromisoformat(raw.strip())
            except ValueError:
                raise RecordError(f"timestamp {raw[:40]!r} at {path!r} is neither ISO 8601 nor epoch time") from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            return int(dt.timestamp() * 1000)
    if not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise RecordError(f"timestamp at {path!r} must be a time, got {type(raw).__name__}")
    return int(raw) if raw > EPOCH_MS_ABOVE else int(round(raw * 1000))


def number(raw: Any, what: str) -> float:
    if isinstance(raw, bool) or raw is None or raw == "":
        raise RecordError(f"{what} is missing or not a number (got {raw!r})")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise RecordError(f"{what} must be a number, got {str(raw)[:40]!r}") from None
    if not math.isfinite(value):
        raise RecordError(f"{what} is not finite ({raw!r})")
    return value


def _values(record: dict[str, Any], m: ReadingMapping) -> list[Value]:
    out: list[Value] = []
    if m.values:
        for f in m.values:
            raw = lookup(record, f.field)
            if raw is None or raw == "":
                continue  # a wide record may lack a quantity, as a meter may: no reading, not a failure
            q = QUANTITIES[f.quantity]
            factor = unit_factor(f.unit, q.unit) if f.unit is not None else 1.0
            assert factor is not None  # checked by ReadingMapping
            out.append(Value(f.quantity, _scaled(number(raw, f.field), f.scale * factor), q.unit, 0))
        return out
    assert m.quantity is not None and m.value is not None
    name = lookup(record, m.quantity)
    obis = m.quantity_map.get(str(name), str(name)) if name is not None else None
    if obis not in QUANTITIES:
        raise RecordError(f"quantity {str(name)[:40]!r} at {m.quantity!r} is neither an OBIS code nor in quantity_map")
    q = QUANTITIES[obis]
    factor = 1.0
    if m.unit is not None:
        unit = lookup(record, m.unit)
        if unit is not None and unit != "":
            found = unit_factor(str(unit), q.unit)
            if found is None:
                raise RecordError(f"unit {str(unit)[:20]!r} cannot be converted to {q.unit!r} ({obis}, {q.name})")
            factor = found
    scale = m.scale if isinstance(m.scale, float) else number(lookup(record, m.scale), f"scale at {m.scale!r}")
    return [Value(obis, _scaled(number(lookup(record, m.value), f"value at {m.value!r}"), scale * factor), q.unit, 0)]


def _scaled(value: float, factor: float) -> float:
    """value × factor without binary noise (2301 × 0.1 is 230.1, not 230.10000000000002): 15 significant
    digits, what a double holds exactly."""
    return value if factor == 1.0 else float(f"{value * factor:.15g}")


def _status(record: dict[str, Any], m: StatusMapping, device_id: str, ts: int,
            source: str) -> ReadingBatch | PollFailure:
    state = lookup(record, m.status)
    if state is None or state == "":
        raise RecordError(f"no status at {m.status!r}")
    problems: list[str] = []
    offline = str(state).lower() not in {s.lower() for s in m.online}
    if offline:
        problems.append(f"partner reports {str(state)[:40]}")
    code = lookup(record, m.error_code)
    if m.error_code is not None and code is not None and str(code).lower() not in {s.lower() for s in m.no_error}:
        problems.append(f"error code {str(code)[:40]}")
    if m.battery is not None and lookup(record, m.battery) not in (None, ""):
        battery = number(lookup(record, m.battery), f"battery at {m.battery!r}")
        if battery < m.battery_low_below:
            problems.append(f"battery low ({battery:g} %)")
    if m.tamper is not None and str(lookup(record, m.tamper)).lower() in ("true", "1", "yes"):
        problems.append("tamper")
    if not problems:
        return ReadingBatch(device_id, ts, source, ())  # the partner sees it fine: it keeps the device online
    kind = FailureKind.DEVICE_OFFLINE if offline else FailureKind.DEVICE_ALARM
    return PollFailure(device_id, ts, source, kind, "; ".join(problems))


def _raw(record: Any) -> bytes:
    try:
        return orjson.dumps(record)
    except TypeError:
        return repr(record).encode()
