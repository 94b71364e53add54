"""The demo's two data partners: a simulated partner API (its own process) and two partner configurations.

- `acme`: JSON, OAuth2 client credentials, cursor pages, readings of meters m-0001…m-0005;
- `volta`: CSV readings with page numbers and an API key, plus a JSON device-status path (online,
  error codes, battery, tamper) for meters m-0006…m-0010.

Readings are every 5 s, fetched every 10 s. Fault control: POST http://127.0.0.1:15100/control
(e.g. {"offline": ["m-0007"]} or {"throttle_every": 3}); see simulators/partner_api.py.
"""
from __future__ import annotations

import asyncio
import signal
import subprocess
from typing import Any

import asyncpg

from meterray.settings import Settings

PARTNER_SIM_PORT = 15100
_MAPPING = {"device": "meter", "timestamp": "time", "quantity": "quantity", "value": "value", "unit": "unit",
            "quantity_map": {"energy": "1-0:1.8.0", "power": "1-0:16.7.0"}}


def demo_partners(base: str) -> list[dict[str, Any]]:
    acme = [f"m-{i:04d}" for i in range(1, 6)]
    volta = [f"m-{i:04d}" for i in range(6, 11)]
    window = {"since": "{since}", "until": "{until}"}
    return [
        {"partner_id": "acme", "name": "ACME Metering (demo)", "base_url": base,
         "auth": {"kind": "oauth2", "token_url": f"{base}/oauth/token", "client_id": "meterray",
                  "client_secret": "sim-secret"},
         "devices": [{"external_id": m, "device_id": f"acme-{m}"} for m in acme],
         "paths": [{"name": "readings", "url": "/api/json/cursor/readings", "records": "data", "format": "json",
                    "query": {**window, "limit": "50", "meters": ",".join(acme)},
                    "pagination": {"kind": "cursor", "next_field": "next_cursor"}, "readings": _MAPPING,
                    "interval_s": 10, "overlap_s": 30, "initial_lookback_s": 300}]},
        {"partner_id": "volta", "name": "Volta Grid (demo)", "base_url": base,
         "auth": {"kind": "api_key", "where": "header", "name": "X-Api-Key", "key": "sim-key"},
         "webhook_secret": "volta-demo-webhook",
         "devices": [{"external_id": m, "device_id": f"volta-{m}"} for m in volta],
         "paths": [{"name": "readings", "url": "/api/csv/page/readings", "format": "csv",
                    "query": {**window, "meters": ",".join(volta)}, "pagination": {"kind": "page", "size": 50},
                    "readings": _MAPPING, "interval_s": 10, "overlap_s": 30, "initial_lookback_s": 300},
                   {"name": "status", "url": "/api/json/none/status", "records": "data", "interval_s": 30,
                    "status": {"device": "meter", "timestamp": "time", "status": "state", "error_code": "error",
                               "battery": "battery", "tamper": "tamper"}}]},
    ]


async def _save(settings: Settings, docs: list[dict[str, Any]]) -> None:
    from storage.postgres import partners as repo
    from storage.secrets import cipher

    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        for doc in docs:
            await repo.save_partner(conn, doc, cipher(settings))
    finally:
        await conn.close()


def start_demo_partners(settings: Settings, port: int = PARTNER_SIM_PORT) -> subprocess.Popen[bytes]:
    """The partner simulator (10 meters, a reading every 5 s) and the two partners stored (new versions
    if they exist); returns the simulator's process."""
    from simulators import partner_api

    proc = partner_api.start(port, 10, 5.0, settings.var_dir / "log" / f"partner-simulator-{port}.log")
    try:
        asyncio.run(_save(settings, demo_partners(f"http://127.0.0.1:{port}")))
    except BaseException:
        proc.send_signal(signal.SIGTERM)
        raise
    return proc
