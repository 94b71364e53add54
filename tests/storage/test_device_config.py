"""Bad configuration refused when stored: by storage's save functions (the pydantic edge) and, for
anything that bypasses them (plain SQL), by the database constraints of migration 0003."""
import asyncpg
import pytest

from meterray.config import ConfigError
from meterray.domain import DeviceSpec, ModbusConnection
from meterray.settings import Settings
from protocols.modbus.profiles import PROFILES
from storage.postgres import devices
from storage.postgres.migrate import migrate


def _gw(cid: str, *devs: DeviceSpec, interval: float = 5.0, timeout: float = 1.0) -> ModbusConnection:
    return ModbusConnection(cid, "10.0.0.7", 502, interval, timeout, devs)


async def test_save_refuses_bad_configuration_and_stores_nothing(database: Settings) -> None:
    conn = await asyncpg.connect(database.pg_dsn)
    try:
        good = _gw("cfg-good", DeviceSpec("cfg-g1", "sdm630", 1))
        bad = _gw("cfg-bad", DeviceSpec("cfg-b1", "sdm360", 1), DeviceSpec("cfg-b2", "sdm630", 250))
        with pytest.raises(ConfigError) as err:
            await devices.save_modbus_connections(conn, [good, bad])
        text = str(err.value)
        assert f"unknown profile 'sdm360'; known profiles: {', '.join(sorted(PROFILES))}" in text
        assert "unit id 250 is reserved" in text
        assert await conn.fetchval("SELECT count(*) FROM devices.connections WHERE id LIKE 'cfg-%'") == 0
    finally:
        await conn.close()


@pytest.mark.parametrize(("statement", "message"), [
    ("INSERT INTO devices.devices (id, name, protocol, profile, connection_id, unit_id)"
     " VALUES ('cfg-x', 'x', 'modbus_tcp', 'sdm360', 'cfg-sql', 1)", "unknown profile 'sdm360'; known"),
    ("INSERT INTO devices.devices (id, name, protocol, profile, connection_id, unit_id)"
     " VALUES ('cfg-x', 'x', 'modbus_tcp', 'sdm630', 'cfg-sql', 250)", "devices_unit_id_modbus"),
    ("INSERT INTO devices.devices (id, name, protocol, profile, connection_id, unit_id)"
     " VALUES ('cfg-x', 'x', 'modbus_tcp', 'sdm630', 'cfg-sql', 255)", "only addresses a single meter"),
    ("UPDATE devices.connections SET poll_interval_s = 0.01, timeout_s = 0.005 WHERE id = 'cfg-sql'",
     "connections_poll_interval_bounds"),
    ("UPDATE devices.connections SET timeout_s = 10 WHERE id = 'cfg-sql'", "connections_check"),
    ("UPDATE devices.connections SET port = 0 WHERE id = 'cfg-sql'", "connections_port_check"),
    ("UPDATE devices.connections SET host = 'a host' WHERE id = 'cfg-sql'", "connections_host_form"),
])
async def test_database_constraints_refuse_what_bypasses_the_edge(database: Settings, statement: str,
                                                                  message: str) -> None:
    conn = await asyncpg.connect(database.pg_dsn)
    try:
        await devices.save_modbus_connections(conn, [_gw("cfg-sql", DeviceSpec("cfg-s1", "sdm630", 1))])
        with pytest.raises(asyncpg.exceptions.CheckViolationError, match=message):
            async with conn.transaction():  # the 0/255 trigger is deferred: it fires at commit
                await conn.execute(statement)
    finally:
        await devices.delete_connections(conn, ["cfg-sql"])
        await conn.close()


async def test_profiles_table_follows_the_code(database: Settings) -> None:
    conn = await asyncpg.connect(database.pg_dsn)
    try:
        await devices.save_modbus_connections(conn, [_gw("cfg-prof", DeviceSpec("cfg-p1", "wb-map3e", 1))])
        # The code "forgets" wb-map3e: it stays (a device uses it) but becomes unavailable for new devices.
        await migrate(database.pg_dsn, profiles=["sdm630"])
        assert await devices.available_profiles(conn) == ["sdm630"]
        with pytest.raises(ConfigError, match="known profiles: sdm630$"):
            await devices.save_modbus_connections(conn, [_gw("cfg-prof2", DeviceSpec("cfg-p2", "wb-map3e", 1))])
        loaded = {c.connection_id for c in await devices.load_modbus_connections(conn)}
        assert "cfg-prof" in loaded  # still there: the shard refuses it with a reason at run time
    finally:
        await migrate(database.pg_dsn, profiles=PROFILES.keys())
        await devices.delete_connections(conn, ["cfg-prof"])
        await conn.close()
    conn = await asyncpg.connect(database.pg_dsn)
    try:
        assert await devices.available_profiles(conn) == sorted(PROFILES)
    finally:
        await conn.close()
