"""The connection document of `/api/v1/connections`: one shape for both kinds of connection.

    {"kind": "modbus_tcp", "connection_id", "host", "port", "poll_interval_s", "timeout_s",
     "devices": [{"device_id", "unit_id", "profile", "name"}]}
    {"kind": "mqtt", "connection_id", "host", "port", "topic_filter", ... (meterray.mqtt_config)}

Nothing here is a new rule: a Modbus document is checked by meterray.config (the model `meterray
register` and storage's save functions use), an MQTT one by meterray.mqtt_config. What this module
adds is only what the document has beyond those models: its `kind`, a device's display `name`, and
the owning organisation (`organisation_id`, honoured for platform staff only: serve_apps decides).
Every problem is reported at once, phrased for a person, as ConfigError.
"""
from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args
from uuid import UUID

from meterray.config import ConfigError, validate_connections
from meterray.domain import ModbusConnection
from meterray.mqtt_config import MqttConnection, connection_dict, validate_mqtt_connections

Kind = Literal["modbus_tcp", "mqtt"]
KINDS: tuple[str, ...] = get_args(Kind)
MAX_NAME = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class ConnectionDoc:
    """A checked connection document: exactly one of `modbus` / `mqtt`, per `kind`."""

    kind: Kind
    modbus: ModbusConnection | None = None
    mqtt: MqttConnection | None = None
    names: Mapping[str, str] = field(default_factory=dict)  # Modbus device id → display name
    organisation_id: UUID | None = None  # as given in the document (None: not given)

    @property
    def connection_id(self) -> str:
        c = self.modbus or self.mqtt
        assert c is not None
        return c.connection_id

    @property
    def device_ids(self) -> list[str]:
        return [d.device_id for d in self.modbus.devices] if self.modbus else []

    def document(self) -> dict[str, Any]:
        """The document as the API shows it (and takes it back on PUT)."""
        if self.mqtt is not None:
            return {"kind": "mqtt", **connection_dict(self.mqtt)}
        c = self.modbus
        assert c is not None
        return {"kind": "modbus_tcp", "connection_id": c.connection_id, "host": c.host, "port": c.port,
                "poll_interval_s": c.poll_interval_s, "timeout_s": c.timeout_s,
                "devices": [{"device_id": d.device_id, "unit_id": d.unit_id, "profile": d.profile,
                             "name": self.names.get(d.device_id, d.device_id)} for d in c.devices]}


def parse_connection(doc: Any, profiles: Collection[str]) -> ConnectionDoc:
    """Check a document against the rules of its kind (`profiles`: the Modbus profiles the database
    knows); raises ConfigError listing every problem."""
    if not isinstance(doc, dict):
        raise ConfigError(["the body must be a JSON object: a connection document"], "connection")
    data = dict(doc)
    kind = data.pop("kind", None)
    problems: list[str] = []
    org: UUID | None = None
    raw_org = data.pop("organisation_id", None)
    if raw_org is not None:
        try:
            org = UUID(str(raw_org))
        except ValueError:
            problems.append(f"organisation_id: {raw_org!r} is not a UUID")
    if kind not in KINDS:
        problems.append(f"kind: must be one of {', '.join(repr(k) for k in KINDS)}, got {kind!r}")
        raise ConfigError(problems, "connection")
    if kind == "mqtt":
        try:
            mqtt = validate_mqtt_connections([data])[0]
        except ConfigError as err:
            raise ConfigError(problems + err.problems, "MQTT") from None
        if problems:
            raise ConfigError(problems, "MQTT")
        return ConnectionDoc("mqtt", mqtt=mqtt, organisation_id=org)
    names, data = _names(data, problems)
    try:
        modbus = validate_connections([data], profiles)[0]
    except ConfigError as err:
        raise ConfigError(problems + err.problems) from None
    if problems:
        raise ConfigError(problems)
    return ConnectionDoc("modbus_tcp", modbus=modbus, names=names, organisation_id=org)


def _names(data: dict[str, Any], problems: list[str]) -> tuple[dict[str, str], dict[str, Any]]:
    """Take the devices' display names out (meterray.config's device model has none); check them."""
    devices = data.get("devices")
    if not isinstance(devices, list):
        return {}, data
    names: dict[str, str] = {}
    plain: list[Any] = []
    cid = data.get("connection_id")
    for i, d in enumerate(devices):
        if not isinstance(d, dict) or "name" not in d:
            plain.append(d)
            continue
        d = dict(d)
        name = d.pop("name")
        plain.append(d)
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME or _CONTROL.search(name):
            problems.append(f"connection {cid!r}: devices[{i}].name: a name is 1..{MAX_NAME} characters without "
                            f"control characters, got {name!r}")
        elif isinstance(d.get("device_id"), str):
            names[d["device_id"]] = name
    return names, {**data, "devices": plain}
