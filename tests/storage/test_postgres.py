"""The PostgreSQL repositories against the real server."""
from datetime import datetime, timezone

import asyncpg

from meterray.device_state import DeviceCheckpoint
from meterray.domain import DeviceSpec, ModbusConnection
from meterray.settings import Settings
from storage.postgres import devices, readings
from storage.postgres.migrate import load_migrations, migrate


def _rows(device: str, start: datetime, n: int, value0: float = 10.0) -> list[readings.ReadingRow]:
    return [(device, "1-0:1.8.0", int(start.replace(second=i).timestamp() * 1000), value0 + i, "kWh", 0, "test")
            for i in range(n)]


async def test_migrations_are_idempotent(database: Settings) -> None:
    assert await migrate(database.pg_dsn) == []
    versions = [m.version for m in load_migrations()]
    assert versions == sorted(versions) and versions[0] == 1


async def test_archive_write_is_idempotent_and_current_keeps_the_latest(database: Settings) -> None:
    conn = await asyncpg.connect(database.pg_dsn)
    try:
        writer = readings.ReadingsWriter()
        start = datetime(2031, 3, 5, 12, 0, tzinfo=timezone.utc)  # a month no partition exists for yet
        await writer.write(conn, _rows("w-1", start, 5))
        assert writer.upserts == 0  # only new keys: the plain insert took them
        await writer.write(conn, _rows("w-1", start, 10))  # a replay of the first five, and five new ones
        assert writer.upserts == 1  # the plain insert met stored keys and the batch was upserted instead
        await readings.ReadingsWriter().write(conn, _rows("w-1", start, 5))  # replayed by another writer, older
        count = await conn.fetchval("SELECT count(*) FROM monitoring.readings WHERE device_id = 'w-1'")
        assert count == 10
        assert await readings.current_readings(conn, "w-1", organisation_id=None) is None  # no such device
        await conn.execute("INSERT INTO devices.devices (id, name, protocol, profile, unit_id)"
                           " VALUES ('w-1', 'w-1', 'modbus', 'sdm630', 1), ('w-2', 'w-2', 'modbus', 'sdm630', 2)")
        current = await readings.current_readings(conn, "w-1", organisation_id=None)
        assert current is not None
        assert [(r["quantity"], r["value"], r["ts"]) for r in current] == [("1-0:1.8.0", 19.0, start.replace(second=9))]
        assert await readings.current_readings(conn, "w-2", organisation_id=None) == []  # no reading yet
        partition = await conn.fetchval(
            "SELECT tableoid::regclass::text FROM monitoring.readings WHERE device_id = 'w-1' LIMIT 1")
        assert partition == "monitoring.readings_2031_03"
        history = await readings.reading_history(conn, "w-1", "1-0:1.8.0", start, start.replace(second=5), 100,
                                                  organisation_id=None)
        assert [r["value"] for r in history] == [10.0, 11.0, 12.0, 13.0, 14.0]
    finally:
        await conn.close()


async def test_corrected_value_replaces_the_stored_one(database: Settings) -> None:
    conn = await asyncpg.connect(database.pg_dsn)
    try:
        start = datetime(2031, 4, 1, tzinfo=timezone.utc)
        writer = readings.ReadingsWriter()
        await writer.write(conn, _rows("w-2", start, 1, 10.0))
        await writer.write(conn, _rows("w-2", start, 1, 11.5))
        assert await conn.fetchval("SELECT value FROM monitoring.readings WHERE device_id = 'w-2'") == 11.5
    finally:
        await conn.close()


async def test_connections_round_trip_and_states(database: Settings) -> None:
    conn = await asyncpg.connect(database.pg_dsn)
    try:
        c = ModbusConnection("repo-test", "10.1.2.3", 502, 5.0, 1.0,
                             (DeviceSpec("repo-a", "sdm630", 1), DeviceSpec("repo-b", "wb-map3e", 2)))
        await devices.save_modbus_connections(conn, [c])
        await devices.save_modbus_connections(conn, [c])
        loaded = {x.connection_id: x for x in await devices.load_modbus_connections(conn)}
        assert loaded["repo-test"] == c
        row = DeviceCheckpoint("repo-a", "offline", None, "timeout", "no answer", None, 4, {"1-0:1.8.0": [1, 2.5]})
        await devices.save_states(conn, [row])
        assert (await devices.load_states(conn, ["repo-a", "nobody"])) == {"repo-a": row}
    finally:
        await conn.close()
