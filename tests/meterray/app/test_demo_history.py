"""The demo's history backfill (meterray/app/demo_history.py) through the real pipeline: Kafka, the device
processor, the PostgreSQL archive and the ClickHouse copy, read back through the aggregates API."""
from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import asyncpg

from meterray.app.demo_history import DemoHistory, Meter
from meterray.domain import DeviceSpec, ModbusConnection, Quality
from meterray.settings import Settings
from protocols.modbus.profiles import PROFILES
from simulators import history
from storage.postgres.devices import save_modbus_connections
from tests.pipeline.helpers import http, platform_admin, sql

METERS = [Meter("hist-demo-sdm", "sdm630"), Meter("hist-demo-wb", "wb-map3e")]
CONNECTION = "hist-demo-conn"
DAYS = 2
MOSCOW = ZoneInfo("Europe/Moscow")


async def _register(settings: Settings) -> None:
    """The meters registered as the demo's are, on a connection that is never polled (disabled in the same
    transaction, so the supervisor never sees it enabled): only the history reaches the pipeline."""
    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        async with conn.transaction():
            await save_modbus_connections(conn, [ModbusConnection(
                CONNECTION, "127.0.0.1", 1, 60.0, 1.0,
                tuple(DeviceSpec(m.device_id, m.profile, n) for n, m in enumerate(METERS, start=1)))])
            await conn.execute("UPDATE devices.connections SET enabled = false WHERE id = $1", CONNECTION)
    finally:
        await conn.close()


def _archive(settings: Settings) -> dict[tuple[str, str], tuple[int, int, int]]:
    """(device, quantity) → (readings, distinct timestamps, OR of quality) in the archive."""
    rows = sql(settings.pg_dsn, "SELECT device_id, quantity, count(*) AS n, count(DISTINCT ts) AS ts,"
               " bit_or(quality) AS q FROM monitoring.readings WHERE device_id = ANY($1::text[]) GROUP BY 1, 2",
               [m.device_id for m in METERS])
    return {(r["device_id"], r["quantity"]): (r["n"], r["ts"], r["q"]) for r in rows}


def _expected_days(meter: Meter, win: history.Window) -> dict[date, float]:
    """Energy of each local day from the generated A+: the day's last register minus the day before's
    (the first day: its last minus its first, as the aggregates define it)."""
    last: dict[date, float] = {}
    first: dict[date, float] = {}
    for b in history.history(meter.device_id, meter.profile, win):
        day = datetime.fromtimestamp(b.ts_ms / 1000, MOSCOW).date()
        value = next(v.value for v in b.values if v.quantity == history.ENERGY)
        first.setdefault(day, value)
        last[day] = value
    days = sorted(last)
    return {d: last[d] - (last[days[i - 1]] if i else first[d]) for i, d in enumerate(days)}


def test_the_history_lands_in_the_archive_and_the_clickhouse_copy_once(runtime: dict) -> None:
    settings: Settings = runtime["settings"]
    asyncio.run(_register(settings))
    until = datetime.now(timezone.utc) - timedelta(hours=1)  # all of it older than the LATE threshold
    said: list[str] = []
    first = DemoHistory(settings, METERS, DAYS, 0, progress=said.append, until=until)
    produced = first.produce()
    slots = DAYS * 288
    values = {m.device_id: len(PROFILES[m.profile].fields) for m in METERS}
    assert (produced.readings, produced.values) == (2 * slots, slots * sum(values.values()))
    first.land_and_train()  # returns once the device processor and both writers are through it

    # Every slot of every quantity once: days × slots readings per meter and quantity, nothing else.
    archive = _archive(settings)
    assert set(archive) == {(m.device_id, f.quantity) for m in METERS for f in PROFILES[m.profile].fields}
    assert all((n, ts) == (slots, slots) for n, ts, _ in archive.values())
    # The device processor's verdict: late (received long after its stamp), and nothing else to flag:
    # no counter went back, no spike, nothing frozen.
    assert {q for _, _, q in archive.values()} == {int(Quality.LATE)}
    assert any(f"{2 * slots:,} readings ({produced.values:,} values) written in" in line for line in said), said
    newest = sql(settings.pg_dsn, "SELECT DISTINCT ts FROM monitoring.readings_current WHERE device_id = ANY($1)",
                 [m.device_id for m in METERS])
    assert [r["ts"] for r in newest] == [datetime.fromtimestamp(first.window.until_ms / 1000, timezone.utc)]
    # History is activity, not silence: each meter went online once and nothing flapped.
    transitions = sql(settings.pg_dsn, "SELECT device_id, status FROM devices.health_transitions"
                      " WHERE device_id = ANY($1) ORDER BY ts", [m.device_id for m in METERS])
    assert sorted((r["device_id"], r["status"]) for r in transitions) == sorted((m.device_id, "online") for m in METERS)

    # The ClickHouse copy: the aggregates API's energy per local day equals the model's.
    for m in METERS:
        want = _expected_days(m, first.window)
        lo, hi = min(want), max(want) + timedelta(days=1)
        status, body = http("GET", f"{runtime['api']}/api/v1/devices/{m.device_id}/aggregates?interval=1d"
                                   f"&from={lo.isoformat()}&to={hi.isoformat()}", headers=platform_admin())
        assert status == 200, body
        got = {date.fromisoformat(i["start"]): i for i in body["intervals"]}
        assert set(got) == set(want)
        for d, energy in want.items():
            assert abs(got[d]["energy"] - energy) < 1e-6, (m.device_id, d, got[d]["energy"], energy)
        assert sum(i["readings"] for i in got.values()) == slots
        assert want[lo + timedelta(days=1)] > 10  # a whole day of a small business: tens of kWh

    # A second start with the same window adds nothing and rewrites nothing.
    again = DemoHistory(settings, METERS, DAYS, 0, progress=said.append, until=until)
    assert again.produce().readings == 0
    again.land_and_train()
    assert "history: already in the archive, nothing to add" in said
    assert _archive(settings) == archive
    # Ten minutes later (a demo restarted after a pause): only the two new slots of each meter.
    later = DemoHistory(settings, METERS, DAYS, 0, progress=said.append, until=until + timedelta(minutes=10))
    assert later.produce().readings == 2 * len(METERS)
    later.land_and_train()
    assert all(n == slots + 2 for n, _, _ in _archive(settings).values())
    print("\n".join(said))  # the figures, for whoever runs it with -s
