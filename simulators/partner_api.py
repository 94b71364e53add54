"""A data partner's HTTP API, simulated (aiohttp), with every kind of pagination, format and trouble.

    python -m simulators.partner_api --port 16201 --devices 20 --step 1

Readings of devices `m-0001`… on a grid of `--step` seconds, deterministic (a reading is a pure
function of device and time, so a page asked for twice is the same page):

    GET /api/{json|csv|xml}/{none|page|offset|cursor|link}/readings?since=…&until=…[&meters=m-0001,…]
        long records: meter, time (ISO 8601), quantity (energy | power), value, unit (Wh | W)
        page:   ?page=1&per_page=N          offset: ?offset=0&limit=N
        cursor: ?cursor=…&limit=N, next in `next_cursor` (JSON/XML body) or `X-Next-Cursor` (CSV)
        link:   next URL in `links.next` (JSON) or `Link: <…>; rel="next"` (CSV, XML)
    GET /api/json/none/status    device status: meter, time, state, error, battery, tamper
    POST /oauth/token            OAuth2 client credentials (HTTP basic), tokens expire after --token-ttl
    POST /control                {"throttle_every": N, "retry_after_s": s, "error_every": N, "slow_every": N,
                                  "slow_s": s, "token_ttl_s": s, "offline": [...], "alarm": {...}, "revoke": true}
    GET /stats                   requests, throttled, errors, slow pages, tokens issued, 401s

Every data request must carry one credential: a bearer token from /oauth/token, the header
`X-Api-Key`, the query `api_key`, or HTTP basic with --user/--password.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import io
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import orjson
from aiohttp import web

QUANTITIES = ("energy", "power")
MAX_PAGE = 10_000


@dataclass(slots=True)
class Faults:
    throttle_every: int = 0  # every Nth data request gets 429
    retry_after_s: float = 1.0
    error_every: int = 0  # every Nth data request gets 500
    slow_every: int = 0  # every Nth data request takes slow_s
    slow_s: float = 2.0
    token_ttl_s: float = 3600.0
    offline: set[str] = field(default_factory=set)
    alarm: dict[str, dict[str, Any]] = field(default_factory=dict)  # meter -> {"error": …, "battery": …, "tamper": …}


@dataclass(slots=True)
class Sim:
    devices: list[str]
    step_ms: int
    api_key: str
    client_id: str
    client_secret: str
    user: str
    password: str
    faults: Faults = field(default_factory=Faults)
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry (monotonic)
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("requests", "pages", "records", "throttled", "errors", "slow", "tokens", "unauthorized"), 0))
    first_pages: dict[str, int] = field(default_factory=dict)  # `since` of a window -> its first pages served


SIM = web.AppKey("sim", Sim)


def reading(device_index: int, ts_ms: int, quantity: str) -> float:
    """Energy grows with time (Wh), power varies with the second of the minute (W): pure functions."""
    if quantity == "energy":
        return round(1_000_000.0 * (device_index + 1) + ts_ms / 1000 * (device_index + 1) / 36, 3)
    return float(100 * (device_index + 1) + (ts_ms // 1000) % 60)


def _records(sim: Sim, since_ms: int, until_ms: int, start: int, count: int,
             meters: list[int]) -> tuple[list[dict[str, Any]], int]:
    """Records `start`…`start+count` of the window for the `meters` (indexes), ordered by (time, meter,
    quantity); and the total."""
    until_ms = min(until_ms, int(time.time() * 1000) + 1)  # nothing from the future
    first = -(-since_ms // sim.step_ms) * sim.step_ms
    slots = max(0, -(-(until_ms - first) // sim.step_ms))
    per_slot = len(meters) * len(QUANTITIES)
    total = slots * per_slot
    out = []
    for i in range(start, min(total, start + count)):
        slot, rest = divmod(i, per_slot)
        m, q = divmod(rest, len(QUANTITIES))
        d = meters[m]
        ts = first + slot * sim.step_ms
        quantity = QUANTITIES[q]
        out.append({"meter": sim.devices[d], "time": _iso(ts), "quantity": quantity,
                    "value": reading(d, ts, quantity), "unit": "Wh" if quantity == "energy" else "W"})
    return out, total


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _ms(text: str | None, default: int) -> int:
    if not text:
        return default
    if text.lstrip("-").isdigit():
        return int(text)
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def _authorised(sim: Sim, request: web.Request) -> bool:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        expiry = sim.tokens.get(auth[7:])
        return expiry is not None and time.monotonic() < expiry
    if auth.startswith("Basic "):
        user, _, password = base64.b64decode(auth[6:]).decode(errors="replace").partition(":")
        return secrets.compare_digest(user, sim.user) and secrets.compare_digest(password, sim.password)
    key = request.headers.get("X-Api-Key") or request.query.get("api_key")
    return key is not None and secrets.compare_digest(key, sim.api_key)


async def _gate(sim: Sim, request: web.Request) -> web.Response | None:
    """Authentication and the configured trouble, in the order a real API applies them."""
    sim.stats["requests"] += 1
    n, f = sim.stats["requests"], sim.faults
    if not _authorised(sim, request):
        sim.stats["unauthorized"] += 1
        return web.json_response({"error": "unauthorized"}, status=401)
    if f.throttle_every and n % f.throttle_every == 0:
        sim.stats["throttled"] += 1
        return web.json_response({"error": "rate limited"}, status=429,
                                 headers={"Retry-After": str(max(0, round(f.retry_after_s)))})
    if f.error_every and n % f.error_every == 0:
        sim.stats["errors"] += 1
        return web.json_response({"error": "internal"}, status=500)
    if f.slow_every and n % f.slow_every == 0:
        sim.stats["slow"] += 1
        await asyncio.sleep(f.slow_s)
    return None


async def readings(request: web.Request) -> web.Response:
    sim: Sim = request.app[SIM]
    refused = await _gate(sim, request)
    if refused is not None:
        return refused
    fmt, paging = request.match_info["fmt"], request.match_info["paging"]
    q = request.query
    now = int(time.time() * 1000)
    since, until = _ms(q.get("since"), now - 3600_000), _ms(q.get("until"), now)
    if paging == "page":
        size = min(MAX_PAGE, int(q.get("per_page", 100)))
        start = (int(q.get("page", 1)) - 1) * size
    elif paging == "offset":
        size, start = min(MAX_PAGE, int(q.get("limit", 100))), int(q.get("offset", 0))
    elif paging in ("cursor", "link"):
        size = min(MAX_PAGE, int(q.get("limit", 100)))
        token = q.get("cursor")
        start = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
    else:
        size, start = MAX_PAGE * 100, 0
    index = {d: i for i, d in enumerate(sim.devices)}
    meters = [index[m] for m in q["meters"].split(",") if m in index] if q.get("meters") else list(range(len(index)))
    records, total = _records(sim, since, until, start, size, meters)
    if start == 0:
        sim.first_pages[str(since)] = sim.first_pages.get(str(since), 0) + 1
    sim.stats["pages"] += 1
    sim.stats["records"] += len(records)
    more = start + len(records) < total
    token = base64.urlsafe_b64encode(str(start + len(records)).encode()).decode() if more else None
    headers: dict[str, str] = {}
    body: dict[str, Any] = {"data": records}
    if paging == "cursor":
        body["next_cursor"] = token
        if fmt == "csv" and token:
            headers["X-Next-Cursor"] = token
    if paging == "link" and token:
        nxt = str(request.url.update_query({"cursor": token, "limit": str(size)}))
        if fmt == "json":
            body["links"] = {"next": nxt}
        else:
            headers["Link"] = f'<{nxt}>; rel="next"'
    if fmt == "csv":
        out = io.StringIO()
        w = csv.DictWriter(out, ["meter", "time", "quantity", "value", "unit"], lineterminator="\r\n")
        w.writeheader()
        w.writerows(records)
        return web.Response(body=out.getvalue().encode(), content_type="text/csv", headers=headers)
    if fmt == "xml":
        rows = "".join("<reading>" + "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in r.items()) + "</reading>"
                       for r in records)
        extra = f"<next_cursor>{token}</next_cursor>" if paging == "cursor" and token else ""
        xml = f'<?xml version="1.0" encoding="UTF-8"?><response><readings>{rows}</readings>{extra}</response>'
        return web.Response(body=xml.encode(), content_type="application/xml", headers=headers)
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)


async def status(request: web.Request) -> web.Response:
    sim: Sim = request.app[SIM]
    refused = await _gate(sim, request)
    if refused is not None:
        return refused
    now = int(time.time() * 1000)
    ts = now // sim.step_ms * sim.step_ms
    out = []
    for d in sim.devices:
        alarm = sim.faults.alarm.get(d, {})
        out.append({"meter": d, "time": _iso(ts), "state": "offline" if d in sim.faults.offline else "online",
                    "error": str(alarm.get("error", "0")), "battery": alarm.get("battery", 90),
                    "tamper": bool(alarm.get("tamper", False))})
    sim.stats["pages"] += 1
    sim.stats["records"] += len(out)
    return web.Response(body=orjson.dumps({"data": out}), content_type="application/json")


async def token(request: web.Request) -> web.Response:
    """RFC 6749 §4.4: client credentials in HTTP basic (§2.3.1), grant_type in the form body."""
    sim: Sim = request.app[SIM]
    form = await request.post()
    auth = request.headers.get("Authorization", "")
    user, _, password = base64.b64decode(auth[6:]).decode(errors="replace").partition(":") \
        if auth.startswith("Basic ") else ("", "", "")
    if form.get("grant_type") != "client_credentials":
        return web.json_response({"error": "unsupported_grant_type"}, status=400)
    if not (secrets.compare_digest(user, sim.client_id) and secrets.compare_digest(password, sim.client_secret)):
        return web.json_response({"error": "invalid_client"}, status=401)
    value = secrets.token_urlsafe(24)
    sim.tokens[value] = time.monotonic() + sim.faults.token_ttl_s
    sim.stats["tokens"] += 1
    return web.json_response({"access_token": value, "token_type": "bearer",
                              "expires_in": max(1, round(sim.faults.token_ttl_s))})


async def control(request: web.Request) -> web.Response:
    sim: Sim = request.app[SIM]
    doc = await request.json()
    f = sim.faults
    for key in ("throttle_every", "error_every", "slow_every"):
        if key in doc:
            setattr(f, key, int(doc[key]))
    for key in ("retry_after_s", "slow_s", "token_ttl_s"):
        if key in doc:
            setattr(f, key, float(doc[key]))
    if "offline" in doc:
        f.offline = set(doc["offline"])
    if "alarm" in doc:
        f.alarm = dict(doc["alarm"])
    if doc.get("revoke"):
        sim.tokens.clear()  # every token issued so far stops working, as a token expiry does
    return web.json_response({"ok": True})


async def stats(request: web.Request) -> web.Response:
    sim: Sim = request.app[SIM]
    return web.json_response({**sim.stats, "devices": len(sim.devices), "first_pages": sim.first_pages})


def build_app(sim: Sim) -> web.Application:
    app = web.Application()
    app[SIM] = sim
    app.router.add_get("/api/json/none/status", status)
    app.router.add_route("*", "/api/{fmt:json|csv|xml}/{paging:none|page|offset|cursor|link}/readings", readings)
    app.router.add_post("/oauth/token", token)
    app.router.add_post("/control", control)
    app.router.add_get("/stats", stats)
    return app


def device_ids(n: int) -> list[str]:
    return [f"m-{i:04d}" for i in range(1, n + 1)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="partner-api", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=15100)
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--step", type=float, default=60.0, help="seconds between a device's readings")
    p.add_argument("--api-key", default="sim-key")
    p.add_argument("--client-id", default="meterray")
    p.add_argument("--client-secret", default="sim-secret")
    p.add_argument("--user", default="meterray")
    p.add_argument("--password", default="sim-password")
    p.add_argument("--token-ttl", type=float, default=3600.0)
    p.add_argument("--throttle-every", type=int, default=0, help="every Nth data request gets 429 + Retry-After")
    p.add_argument("--retry-after", type=float, default=1.0)
    p.add_argument("--error-every", type=int, default=0, help="every Nth data request gets 500")
    p.add_argument("--slow-every", type=int, default=0, help="every Nth data request takes --slow seconds")
    p.add_argument("--slow", type=float, default=2.0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    sim = Sim(device_ids(a.devices), int(a.step * 1000), a.api_key, a.client_id, a.client_secret, a.user, a.password,
              Faults(throttle_every=a.throttle_every, retry_after_s=a.retry_after, error_every=a.error_every,
                     slow_every=a.slow_every, slow_s=a.slow, token_ttl_s=a.token_ttl))
    web.run_app(build_app(sim), host=a.host, port=a.port, print=None, access_log=None)
    return 0


def start(port: int, devices: int, step_s: float, log_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    """The simulator as its own process (its CPU is not meterray's); returns once it answers."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "simulators.partner_api", "--port", str(port), "--devices",
                             str(devices), "--step", str(step_s), *extra],
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the partner simulator did not start on port {port}; see {log_path}") from None
            time.sleep(0.1)


if __name__ == "__main__":
    raise SystemExit(main())
