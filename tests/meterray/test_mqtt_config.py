"""The MQTT configuration edge: what is refused, with every problem named, and what round-trips
through PostgreSQL unchanged."""
from __future__ import annotations

import asyncpg
import pytest

from meterray.mqtt_config import JsonMapping, MqttConfigError, MqttConnection, validate_mqtt_connections
from meterray.settings import Settings
from storage.postgres import mqtt as mqtt_repo


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(MqttConfigError) as err:
        validate_mqtt_connections([
            {"connection_id": "a b", "host": "broker", "topic_filter": "x/#/y"},
            {"connection_id": "ok-id", "host": "broker", "topic_filter": "$share/g/x", "subscribers": 0},
            {"connection_id": "c", "host": "broker", "topic_filter": "x/y+", "share_group": "a/b"},
            {"connection_id": "e", "host": "broker", "topic_filter": "x", "payload_format": "gateway",
             "mapping": {"ts_field": "t"}},
            {"connection_id": "d", "host": "broker", "topic_filter": "x", "payload_format": "json",
             "mapping": {"names": {"e": "9.9.9"}, "scale": {"1-0:1.8.0": 0}}},
        ])
    text = str(err.value)
    assert text.startswith("invalid MQTT configuration:")
    for expected in ("MQTT connection 'a b': connection_id", "'#' must be a whole level at the end",
                     "give the plain topic filter", "subscribers: Input should be greater than or equal to 1",
                     "'+' must be a whole level", "share_group 'a/b'", "mapping is only used by payload_format 'json'",
                     "names map to unknown OBIS code(s) ['9.9.9']", "scale of 1-0:1.8.0 must be a finite, non-zero"):
        assert expected in text, (expected, text)


async def test_connections_round_trip_through_postgres_and_a_bad_row_is_refused_by_the_table(
        database: Settings) -> None:
    mapping = JsonMapping(device_from="payload", device_field="meta.id", ts_field="t", ts_format="iso8601",
                          values_field="", names=(("kwh", "1-0:1.8.0"),), scale=(("1-0:1.8.0", 0.001),))
    wanted = [MqttConnection("cfg-mqtt-1", "127.0.0.1", 1883, "site/+/state", "grp", 3, "json", mapping, True, 50, 60),
              MqttConnection("cfg-mqtt-2", "broker.example", 8883, "meterray/v1/+/readings")]
    conn = await asyncpg.connect(database.pg_dsn)
    try:
        await mqtt_repo.save_mqtt_connections(conn, wanted)
        loaded = {c.connection_id: c for c in await mqtt_repo.load_mqtt_connections(conn)}
        assert [loaded[c.connection_id] for c in wanted] == wanted
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("INSERT INTO devices.mqtt_connections (id, host, topic_filter, subscribers)"
                               " VALUES ('cfg-mqtt-3', 'h', 'x', 99)")
        assert await mqtt_repo.register_mqtt_devices(conn, ["cfg-dev-1", "cfg-dev-2"]) == {"cfg-dev-1", "cfg-dev-2"}
        assert await mqtt_repo.register_mqtt_devices(conn, ["cfg-dev-1", "cfg-dev-3"]) == {"cfg-dev-3"}  # idempotent
        rows = await conn.fetch("SELECT protocol, profile FROM devices.devices WHERE id LIKE 'cfg-dev-%'")
        assert {(r["protocol"], r["profile"]) for r in rows} == {("mqtt", "mqtt")}
    finally:
        await mqtt_repo.delete_mqtt_connections(conn, [c.connection_id for c in wanted])
        await conn.execute("DELETE FROM devices.devices WHERE id LIKE 'cfg-dev-%'")
        await conn.close()
