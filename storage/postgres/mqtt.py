"""Queries of MQTT configuration: connections (devices.mqtt_connections) and device registration."""
from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

import asyncpg
import orjson

from meterray.mqtt_config import MqttConnection, mapping_dict, stored_connection, validate_mqtt_connections

log = logging.getLogger(__name__)

MQTT_PROFILE = "mqtt"  # devices.profiles row of every device that reports over MQTT (migration 0005)


async def load_mqtt_connections(conn: asyncpg.Connection | asyncpg.Pool) -> list[MqttConnection]:
    """The enabled connections; a stored row the code cannot use is logged with its problems and skipped."""
    rows = await conn.fetch(
        """
        SELECT id, host, port, topic_filter, share_group, subscribers, payload_format, mapping::text AS mapping,
               auto_register, inflight, session_expiry_s
        FROM devices.mqtt_connections WHERE enabled ORDER BY id
        """
    )
    out = []
    for r in rows:
        data = {**dict(r), "connection_id": r["id"], "mapping": orjson.loads(r["mapping"])}
        del data["id"]
        if data["payload_format"] != "json":
            data.pop("mapping")
        c, problems = stored_connection(data)
        if c is None:
            log.error("MQTT connection %s is not run: %s", r["id"], "; ".join(problems))
            continue
        out.append(c)
    return out


async def save_mqtt_connections(conn: asyncpg.Connection | asyncpg.Pool,
                                connections: Sequence[MqttConnection]) -> None:
    """Insert or update connections (idempotent), all or none; checked first (raises MqttConfigError)."""
    connections = validate_mqtt_connections(connections)
    await conn.executemany(
        """
        INSERT INTO devices.mqtt_connections (id, host, port, topic_filter, share_group, subscribers, payload_format,
            mapping, auto_register, inflight, session_expiry_s)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11)
        ON CONFLICT (id) DO UPDATE SET host = excluded.host, port = excluded.port,
            topic_filter = excluded.topic_filter, share_group = excluded.share_group,
            subscribers = excluded.subscribers, payload_format = excluded.payload_format, mapping = excluded.mapping,
            auto_register = excluded.auto_register, inflight = excluded.inflight,
            session_expiry_s = excluded.session_expiry_s, enabled = true, updated_at = now()
        """,
        [(c.connection_id, c.host, c.port, c.topic_filter, c.share_group, c.subscribers, c.payload_format,
          orjson.dumps(mapping_dict(c.mapping)).decode(), c.auto_register, c.inflight, c.session_expiry_s)
         for c in connections],
    )


async def delete_mqtt_connections(conn: asyncpg.Connection | asyncpg.Pool, connection_ids: Sequence[str]) -> int:
    rows = await conn.fetch("DELETE FROM devices.mqtt_connections WHERE id = ANY($1::text[]) RETURNING id",
                            list(connection_ids))
    return len(rows)


async def register_mqtt_devices(conn: asyncpg.Connection | asyncpg.Pool, device_ids: Collection[str]) -> set[str]:
    """Register devices first seen on an MQTT connection (idempotent: an id already registered, under
    any protocol, is left as it is); returns the ids this call added."""
    rows = await conn.fetch(
        """
        INSERT INTO devices.devices (id, name, protocol, profile)
        SELECT id, id, 'mqtt', $2 FROM unnest($1::text[]) AS id
        ON CONFLICT (id) DO NOTHING
        RETURNING id
        """,
        sorted(device_ids), MQTT_PROFILE,
    )
    return {r["id"] for r in rows}
