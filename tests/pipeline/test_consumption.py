"""Consumption on the real pipeline: a simulated meter is replaced (the simulator's `reset` fault: its
counter starts again from 0), its readings go shards → Kafka → device processor → Kafka → PgWriter →
PostgreSQL, and the consumption API counts the energy before plus after the replacement, never
negative, matching the simulator's own load integral; the same readings delivered again through
Kafka change nothing."""
from __future__ import annotations

import asyncio
import math
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode

from meterray.domain import Quality, ReadingBatch, Value
from protocols.modbus.profiles import PROFILES
from simulators.meter_model import SimulatedMeter
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer
from storage.postgres.consumption import to_ms
from tests.conftest import wait_for
from tests.pipeline.helpers import http, platform_admin, sql

ENERGY = "1-0:1.8.0"
VOLTAGE = "1-0:32.7.0"


def _energy_rows(dsn: str, device_id: str) -> list:
    return sql(dsn, "SELECT ts, value, quality FROM monitoring.readings WHERE device_id = $1 AND quantity = $2"
                    " ORDER BY ts", device_id, ENERGY)


def _consumption(api: str, device_id: str, start: datetime) -> dict:
    end = datetime.now(timezone.utc) + timedelta(minutes=1)
    query = urlencode({"from": start.isoformat(), "to": end.isoformat()})
    status, body = http("GET", f"{api}/api/v1/devices/{device_id}/consumption?{query}", headers=platform_admin())
    assert status == 200, body
    return body


def test_replaced_meter_counts_before_plus_after_and_replays_do_not_double(runtime: dict, sim_control: str) -> None:
    settings, api, manifest = runtime["settings"], runtime["api"], runtime["manifest"]
    last_port = manifest[-1]["port"]
    # An SDM630 no other test puts a fault on (test_faults uses the second meter and the last port).
    meter = next(m for m in manifest[2:] if m["profile"] == "sdm630" and m["port"] != last_port)
    device_id = meter["device_id"]
    wait_for(lambda: len(_energy_rows(settings.pg_dsn, device_id)) >= 5, 90, "five readings of the meter")
    assert http("POST", f"{sim_control}/faults", {"device_id": device_id, "fault": "reset"})[0] == 200
    try:
        def after_reset() -> list:
            rows = _energy_rows(settings.pg_dsn, device_id)
            flagged = [i for i, r in enumerate(rows) if r["quality"] & Quality.COUNTER_DECREASE]
            return rows if flagged and len(rows) - flagged[0] >= 5 else []

        wait_for(after_reset, 60, "five readings of the new counter")
        # The meter stops answering, so the archive holds a fixed series to compare with: once the device
        # processor has recorded a timeout of a poll after the fault, every reading before it is on its way.
        fault_at = datetime.now(timezone.utc)
        assert http("POST", f"{sim_control}/faults", {"device_id": device_id, "fault": "timeout"})[0] == 200
        wait_for(lambda: sql(settings.pg_dsn, "SELECT 1 FROM devices.device_state WHERE device_id = $1"
                                              " AND last_failure_kind = 'timeout' AND last_failure_at > $2",
                             device_id, fault_at), 60, "a timeout of the meter to be recorded")

        def settled() -> tuple[list, dict] | None:
            # The archive, the API's answer, and the archive again: the same readings both times.
            rows = _energy_rows(settings.pg_dsn, device_id)
            if datetime.now(timezone.utc) - rows[-1]["ts"] < timedelta(seconds=5):
                return None
            body = _consumption(api, device_id, rows[0]["ts"])
            return (rows, body) if _energy_rows(settings.pg_dsn, device_id) == rows else None

        rows, body = wait_for(settled, 30, "the meter's last reading to be stored", every_s=2.0)
        drop = next(i for i, r in enumerate(rows) if r["quality"] & Quality.COUNTER_DECREASE)
        old, new = rows[:drop], rows[drop:]
        assert new[0]["value"] < old[-1]["value"] / 10  # a counter that started again
        first = rows[0]["ts"]
        energies = [i["energy"] for i in body["intervals"] if i["energy"] is not None]
        assert energies and min(energies) >= 0
        assert [d["kind"] for d in body["counter_drops"]] == ["reset"]
        assert any("COUNTER_DECREASE" in i["quality_flags"] for i in body["intervals"])
        # Before plus after: the old counter's advance, then the new counter from 0.
        before_plus_after = (old[-1]["value"] - old[0]["value"]) + new[-1]["value"]
        assert abs(body["total"] - before_plus_after) < 1e-6
        # ...which is what the meter consumed (the simulator integrates its load exactly), less what it used
        # between its last old reading and the replacement (under a second), within float32 resolution.
        model = SimulatedMeter(device_id, PROFILES[meter["profile"]])
        consumed = (model.energy_since_install_kwh(rows[-1]["ts"].timestamp())
                    - model.energy_since_install_kwh(first.timestamp()))
        per_second = model.params.peak_kw * 1.5 / 3600
        float32 = 2.0 ** (math.frexp(old[-1]["value"])[1] - 24)  # the SDM630 register's resolution there
        assert consumed - 2 * per_second - 2 * float32 < body["total"] < consumed + 2 * float32, (
            body["total"], consumed)

        # Every reading of the meter delivered again on the `readings` topic, then a voltage reading at a
        # new instant behind them on the same partition: once the voltage is stored, so are the repeats.
        marker = rows[-1]["ts"] + timedelta(milliseconds=1)
        batches = [ReadingBatch(device_id, to_ms(r["ts"]), "replay",
                                (Value(ENERGY, r["value"], "kWh", r["quality"]),)) for r in rows]
        batches.append(ReadingBatch(device_id, to_ms(marker), "replay",
                                    (Value(VOLTAGE, 230.0, "V", 0),)))
        partition = topics.partition_for(device_id, settings.kafka_partitions)

        async def replay() -> None:
            async with AsyncProducer(settings.kafka_bootstrap) as producer:
                await producer.send_many((settings.topic(topics.READINGS), partition, device_id.encode(),
                                          codec.encode(b)) for b in batches)

        asyncio.run(replay())
        wait_for(lambda: sql(settings.pg_dsn, "SELECT 1 FROM monitoring.readings WHERE device_id = $1"
                                              " AND quantity = $2 AND ts = $3", device_id, VOLTAGE, marker),
                 60, "the replayed readings to be written")
        assert len(_energy_rows(settings.pg_dsn, device_id)) == len(rows)
        again = _consumption(api, device_id, first)
        assert abs(again["total"] - body["total"]) < 1e-9
        assert [i["energy"] for i in again["intervals"]] == [i["energy"] for i in body["intervals"]]
    finally:
        http("DELETE", f"{sim_control}/faults")
    wait_for(lambda: datetime.now(timezone.utc) - _energy_rows(settings.pg_dsn, device_id)[-1]["ts"]
             < timedelta(seconds=3), 60, "the meter to report again once it answers")
