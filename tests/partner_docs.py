"""Partner documents for the tests, against the partner simulator (simulators/partner_api.py)."""
from __future__ import annotations

from typing import Any

from simulators.partner_api import reading

ENERGY, POWER = "1-0:1.8.0", "1-0:16.7.0"
LONG_MAPPING = {"device": "meter", "timestamp": "time", "quantity": "quantity", "value": "value", "unit": "unit",
                "quantity_map": {"energy": ENERGY, "power": POWER}}
RECORDS = {"json": "data", "xml": "response.readings.reading", "csv": None}
API_KEY = {"kind": "api_key", "key": "sim-key"}


def readings_path(name: str, fmt: str, paging: str, meters: list[str], size: int = 7, **extra: Any) -> dict[str, Any]:
    query = {"since": "{since}", "until": "{until}", "meters": ",".join(meters)}
    pagination: dict[str, Any] = {"kind": paging}
    if paging == "page":
        pagination["size"] = size
    elif paging == "offset":
        pagination["limit"] = size
    elif paging in ("cursor", "link"):
        query["limit"] = str(size)
        if paging == "cursor":
            pagination.update({"json": {"next_field": "next_cursor"}, "xml": {"next_field": "response.next_cursor"},
                               "csv": {"next_field": None, "next_header": "X-Next-Cursor"}}[fmt])
        elif fmt == "json":
            pagination["next_field"] = "links.next"
    return {"name": name, "url": f"/api/{fmt}/{paging}/readings", "query": query, "pagination": pagination,
            "format": fmt, "records": RECORDS[fmt], "readings": LONG_MAPPING, "interval_s": 2.0, "overlap_s": 2.0,
            "initial_lookback_s": 20.0, **extra}


def partner(pid: str, base_url: str, paths: list[dict[str, Any]], meters: list[str], auth: dict[str, Any] = API_KEY,
            **extra: Any) -> dict[str, Any]:
    return {"partner_id": pid, "base_url": base_url, "auth": auth, "timeout_s": 5.0, "retries": 3,
            "rate": {"requests_per_minute": 6000, "backfill_requests_per_minute": 600},
            "devices": [{"external_id": m, "device_id": f"{pid}-{m}"} for m in meters], "paths": paths, **extra}


def meters(first: int, n: int) -> list[str]:
    return [f"m-{i:04d}" for i in range(first, first + n)]


def expected_kwh(meter: str, ts_ms: int) -> float:
    """What meterray must store for the simulator's energy reading (Wh → kWh)."""
    return float(f"{reading(int(meter[2:]) - 1, ts_ms, 'energy') * 0.001:.15g}")
