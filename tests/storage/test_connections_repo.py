"""The connections repository on the real PostgreSQL: one id per connection across both kinds (also for
plain SQL, migration 0015), owners and versions written with the save, scope by organisation."""
from __future__ import annotations

import uuid

import asyncpg
import pytest

from meterray.connections import parse_connection
from meterray.domain import DeviceSpec, ModbusConnection
from meterray.mqtt_config import MqttConnection
from meterray.settings import Settings
from protocols.modbus.profiles import PROFILES
from storage.postgres import connections as repo
from storage.postgres import devices, mqtt


async def test_an_id_is_one_connection_whichever_kind(database: Settings) -> None:
    conn = await asyncpg.connect(database.pg_dsn)
    try:
        await devices.save_modbus_connections(conn, [ModbusConnection("repo-one", "10.0.0.9", 502, 5, 1,
                                                                      (DeviceSpec("repo-one-1", "sdm630", 1),))])
        with pytest.raises(asyncpg.UniqueViolationError, match="taken by a connection of the other kind"):
            await mqtt.save_mqtt_connections(conn, [MqttConnection("repo-one", "127.0.0.1", 1883, "a/+")])
        await mqtt.save_mqtt_connections(conn, [MqttConnection("repo-two", "127.0.0.1", 1883, "a/+")])
        with pytest.raises(asyncpg.UniqueViolationError, match="taken by a connection of the other kind"):
            await conn.execute("INSERT INTO devices.connections (id, protocol, host, port) VALUES"
                               " ('repo-two', 'modbus_tcp', '10.0.0.9', 502)")
    finally:
        await devices.delete_connections(conn, ["repo-one"])
        await mqtt.delete_mqtt_connections(conn, ["repo-two"])
        await conn.close()


async def test_save_records_owner_names_and_versions_and_scope_hides_others(database: Settings) -> None:
    org, other = uuid.uuid4(), uuid.uuid4()
    mine, theirs, staff = repo.Scope(org), repo.Scope(other), repo.Scope(None, every_organisation=True)
    doc = parse_connection({"kind": "modbus_tcp", "connection_id": "repo-gw", "host": "10.0.0.9", "port": 502,
                            "poll_interval_s": 5, "timeout_s": 1,
                            "devices": [{"device_id": "repo-gw-1", "unit_id": 1, "profile": "sdm630",
                                         "name": "Main"}]}, PROFILES.keys())
    pool = await asyncpg.create_pool(database.pg_dsn, min_size=1, max_size=2)
    try:
        user = uuid.uuid4()
        stored = await repo.save_connection(pool, doc, org, user, mine, expect_new=True)
        assert (stored.version, stored.organisation_id) == (1, org)
        assert stored.document["devices"] == [{"device_id": "repo-gw-1", "unit_id": 1, "profile": "sdm630",
                                               "name": "Main"}]
        assert await pool.fetchrow("SELECT name, organisation_id FROM devices.devices WHERE id = 'repo-gw-1'") == \
            ("Main", org)
        with pytest.raises(FileExistsError):
            await repo.save_connection(pool, doc, org, user, mine, expect_new=True)
        with pytest.raises(LookupError):  # another organisation's connection is as good as missing
            await repo.save_connection(pool, doc, other, user, theirs, expect_new=False)
        assert await repo.get_connection(pool, "repo-gw", theirs) is None
        assert (await repo.get_connection(pool, "repo-gw", staff)) is not None
        with pytest.raises(repo.ConflictError, match="changed meanwhile"):
            await repo.save_connection(pool, doc, org, user, mine, expect_new=False, if_version=7)
        assert (await repo.save_connection(pool, doc, org, user, mine, expect_new=False, if_version=1)).version == 2
        assert not await repo.delete_connection(pool, "repo-gw", theirs, user)
        assert await repo.delete_connection(pool, "repo-gw", mine, user)
        rows = await repo.versions(pool, "repo-gw", mine)
        assert [(r["version"], r["deleted"], r["changed_by"]) for r in rows] == [(1, False, user), (2, False, user),
                                                                                  (3, True, user)]
        assert await repo.versions(pool, "repo-gw", theirs) == []
        assert await pool.fetchval("SELECT count(*) FROM devices.devices WHERE id = 'repo-gw-1'") == 0
    finally:
        await pool.close()
