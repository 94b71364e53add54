"""`meterray status`: the runtime on one screen (refreshing with --watch), from the same view as
`GET /api/v1/runtime` (serve_apps.monitoring.runtime.shape)."""
from __future__ import annotations

import asyncio
import sys
from typing import Any, TextIO

from meterray.settings import Settings
from serve_apps.monitoring.runtime import RuntimeOut, shape, take_sample

CLEAR = "\033[H\033[2J"


def render(view: RuntimeOut) -> str:
    sup = view.supervisor
    window = f"rates over {view.window_s:.1f} s" if view.window_s else "no rates yet"
    lines = [f"meterray runtime — supervisor pid {sup.get('pid')}, up {sup.get('uptime_s')} s, "
             f"{sup.get('reconciles')} reconciles; {window}", ""]
    lines.append(f"{'ACTOR':<22}{'PID':>8}{'RESTARTS':>10}{'CONNS':>7}{'POLLS/S':>9}{'READINGS/S':>12}"
                 f"{'MSGS/S':>9}{'DLQ':>7}  NOTES")
    for a in view.actors:
        r, c = a.rates_per_s or {}, a.counters
        polls = _rate(r, "polls_ok", "polls_failed") if a.role == "modbus-shard" else None
        msgs = _rate(r, "messages") if a.role != "modbus-shard" else None
        lines.append(f"{a.name:<22}{a.pid or '-':>8}{a.restarts:>10}{a.connections:>7}{_fmt(polls):>9}"
                     f"{_fmt(_rate(r, 'readings')):>12}{_fmt(msgs):>9}{c.get('dead_letters', 0):>7}"
                     f"  {_notes(a.role, c)}")
    lines += ["", "ASSIGNMENTS"]
    for a in view.actors:
        if a.role == "modbus-shard":
            lines.append(f"  {a.name}: {a.connections} connections (tasks started {a.tasks_started}, stopped "
                         f"{a.tasks_stopped}): {', '.join(a.connection_ids) or '-'}")
    lines += ["", "CONSUMER LAG (records not yet committed)"]
    for g in view.lag:
        lines.append(f"  {g.role:<18}{g.topic:<34}{g.lag if g.lag is not None else '? ' + (g.error or ''):>10}")
    lines += ["", "DEVICES  " + ("  ".join(f"{k} {v}" for k, v in sorted(view.device_states.items())) or "none"),
              f"         total {sum(view.device_states.values())}"]
    return "\n".join(lines)


def _rate(rates: dict[str, float], *keys: str) -> float | None:
    found = [rates[k] for k in keys if k in rates]
    return round(sum(found), 1) if found else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _notes(role: str, c: dict[str, Any]) -> str:
    if role == "modbus-shard":
        notes = [f"failed {c.get('polls_failed', 0)}", f"buffered {c.get('buffered_records', 0)}",
                 f"p99 {c.get('p99_ms')} ms"]
        if c.get("buffer_dropped_records"):
            notes.append(f"DROPPED {c['buffer_dropped_records']}")
        return ", ".join(notes)
    notes = [f"batches {c.get('batches', 0)}"]
    if c.get("paused"):
        notes.append(f"PAUSED {c.get('outage_s')} s")
    if c.get("last_error"):
        notes.append(f"last error: {c['last_error']}")
    return ", ".join(notes)


async def show(settings: Settings, supervisor: Any, watch: bool, interval_s: float, as_json: bool,
               out: TextIO = sys.stdout) -> None:
    import asyncpg

    from meterray.app.runtime import runtime_sources

    sources = runtime_sources(settings)
    pool = await asyncpg.create_pool(settings.pg_dsn, min_size=1, max_size=2)
    try:
        previous = await take_sample(supervisor, pool, sources)
        while True:
            await asyncio.sleep(interval_s)
            current = await take_sample(supervisor, pool, sources)
            view = shape(current, previous, sources.groups)
            text = view.model_dump_json(indent=2) if as_json else render(view)
            print((CLEAR if watch else "") + text, file=out, flush=True)
            if not watch:
                return
            previous = current
    finally:
        await pool.close()
