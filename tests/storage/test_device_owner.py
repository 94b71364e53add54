"""Devices get an owner through storage's save function; every query the API answers with is scoped to it."""
from __future__ import annotations

import asyncio
import uuid

import asyncpg

from meterray.domain import DeviceSpec, ModbusConnection
from meterray.settings import Settings
from storage.postgres import auth_users, devices
from tests.fakes import valid_inn


def test_the_owner_is_set_kept_and_changed_and_queries_are_scoped_to_it(database: Settings) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(database.pg_dsn)
        try:
            a = await auth_users.create_organisation(conn, valid_inn(9201), "owner A")
            b = await auth_users.create_organisation(conn, valid_inn(9202), "owner B")
            c = ModbusConnection("own-c", "192.0.2.1", 502, 60.0, 1.0, (DeviceSpec("own-1", "sdm630", 1),))
            await devices.save_modbus_connections(conn, [c], organisation_id=a)
            await conn.execute("UPDATE devices.connections SET enabled = false WHERE id = 'own-c'")
            owner = "SELECT organisation_id FROM devices.devices WHERE id = 'own-1'"
            assert await conn.fetchval(owner) == a
            await devices.save_modbus_connections(conn, [c])  # re-registered without an owner: kept
            assert await conn.fetchval(owner) == a
            assert (await devices.get_device(conn, "own-1", organisation_id=a))["organisation_id"] == a
            assert await devices.get_device(conn, "own-1", organisation_id=b) is None
            assert await devices.get_device(conn, "own-1", organisation_id=None) is not None  # platform staff
            assert [r["id"] for r in await devices.list_devices(conn, organisation_id=a)] == ["own-1"]
            assert await devices.list_devices(conn, organisation_id=b) == []
            await devices.save_modbus_connections(conn, [c], organisation_id=b)  # handed over
            assert await conn.fetchval(owner) == b
            assert await devices.list_devices(conn, organisation_id=a) == []
            by_status, _ = await devices.health_summary(conn, organisation_id=b)
            assert by_status == {"unknown": 1}
            assert await devices.health_summary(conn, organisation_id=uuid.uuid4()) == ({}, {})
        finally:
            await conn.close()

    asyncio.run(run())
