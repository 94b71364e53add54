"""The edge of stored MQTT configuration: what a person may register as an MQTT connection.

An MQTT connection is one topic filter on one broker, read by `subscribers` shard actors that share
it (MQTT 5 shared subscription `$share/<group>/<filter>`, OASIS MQTT 5.0 §4.8.2: the broker hands
each message to one member of the group). Every connection understands meterray's own format
(topic `meterray/v1/<device_id>/readings`, protocols/mqtt/codecs.py); `payload_format` adds what
other topics carry: a JSON document with a field mapping (`json`) or a gateway batch (`gateway`).

The pydantic model checks a configuration when it is stored; the frozen dataclasses are what the
runtime passes around (hashable, compared by the supervisor to find what changed).
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from meterray.config import ConfigError, Identifier, describe
from meterray.quantities import QUANTITIES

PayloadFormat = Literal["meterray", "json", "gateway"]
TsFormat = Literal["epoch_ms", "epoch_s", "iso8601"]
MAX_SUBSCRIBERS = 16  # shard actors per connection: each is a process (DESIGN.md, ~50 MB)
# The in-flight window (MQTT 5 Receive Maximum, §3.1.2.11.3): DESIGN.md measured paho at ~11.5k msg/s
# with a window of 100 and collapsing with 65535. Messages are acknowledged only after Kafka
# confirmed them, so the window is also how much a shard holds unacknowledged.
DEFAULT_INFLIGHT = 100
MAX_INFLIGHT = 1000
# How long the broker keeps a subscriber's session (and queues its messages) while it is away:
# long enough for a shard to be replaced (seconds) or a runtime restart (minutes).
DEFAULT_SESSION_EXPIRY_S = 3600
_GROUP = re.compile(r"^[A-Za-z0-9._:@-]{1,64}$")  # no '/', '+', '#' in a share name (MQTT 5.0 §4.8.2)


@dataclass(frozen=True, slots=True)
class JsonMapping:
    """Where a generic JSON message keeps its parts.

    `device_from`: "topic" (the topic level at index `device_topic_level`, 0-based; negative counts
    from the end) or "payload" (the field `device_field`). Fields are dotted paths into the document.
    `values_field`: the object holding the values ("" = the document itself, minus the device and
    timestamp fields). Its keys are OBIS codes, or names mapped to OBIS codes by `names`; keys
    neither known nor named are ignored (a gateway may send more than we store) — unless nothing is
    left, which is refused. `scale` multiplies a value (by OBIS code) into the vocabulary's unit,
    e.g. 0.001 for a device reporting energy in Wh.
    """

    device_from: Literal["topic", "payload"] = "topic"
    device_topic_level: int = -1
    device_field: str = "device_id"
    ts_field: str = "ts"
    ts_format: TsFormat = "epoch_ms"
    values_field: str = "values"
    names: tuple[tuple[str, str], ...] = ()
    scale: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class MqttConnection:
    """One subscription on one broker and how to read it."""

    connection_id: str
    host: str
    port: int
    topic_filter: str
    share_group: str = ""  # empty: derived from the connection id (MqttConnection.group)
    subscribers: int = 1
    payload_format: PayloadFormat = "meterray"
    mapping: JsonMapping = field(default_factory=JsonMapping)
    auto_register: bool = False
    inflight: int = DEFAULT_INFLIGHT
    session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S

    @property
    def group(self) -> str:
        return self.share_group or re.sub(r"[^A-Za-z0-9._:@-]", "_", self.connection_id)[:64]


class MqttConfigError(ConfigError):
    """MQTT configuration that cannot be stored; `problems` lists each, phrased for a person."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__(problems)
        self.args = ("invalid MQTT configuration:\n" + "\n".join(f"  - {p}" for p in self.problems),)

    def __str__(self) -> str:
        return str(self.args[0])


class JsonMappingConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    device_from: Literal["topic", "payload"] = "topic"
    device_topic_level: int = Field(default=-1, ge=-32, le=31)
    device_field: str = Field(default="device_id", min_length=1, max_length=128)
    ts_field: str = Field(default="ts", min_length=1, max_length=128)
    ts_format: TsFormat = "epoch_ms"
    values_field: str = Field(default="values", max_length=128)
    names: dict[str, str] = Field(default_factory=dict)
    scale: dict[str, float] = Field(default_factory=dict)

    @field_validator("names")
    @classmethod
    def _names_to_obis(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(obis for obis in v.values() if obis not in QUANTITIES)
        if bad:
            raise ValueError(f"names map to unknown OBIS code(s) {bad}; known codes are in meterray.quantities")
        return v

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: dict[str, float]) -> dict[str, float]:
        for obis, factor in v.items():
            if obis not in QUANTITIES:
                raise ValueError(f"scale names unknown OBIS code {obis!r}; scale is keyed by OBIS code")
            if not math.isfinite(factor) or factor == 0:
                raise ValueError(f"scale of {obis} must be a finite, non-zero number, got {factor}")
        return v

    def to_domain(self) -> JsonMapping:
        return JsonMapping(self.device_from, self.device_topic_level, self.device_field, self.ts_field,
                           self.ts_format, self.values_field, tuple(sorted(self.names.items())),
                           tuple(sorted(self.scale.items())))


_DEFAULT_MAPPING = JsonMappingConfig.model_validate({})


class MqttConnectionConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    connection_id: Identifier
    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:_\[\]-]+$")
    port: int = Field(default=1883, ge=1, le=65535)
    topic_filter: str = Field(min_length=1, max_length=1024)
    share_group: str = ""
    subscribers: int = Field(default=1, ge=1, le=MAX_SUBSCRIBERS)
    payload_format: PayloadFormat = "meterray"
    mapping: JsonMappingConfig = Field(default_factory=lambda: _DEFAULT_MAPPING)
    auto_register: bool = False
    inflight: int = Field(default=DEFAULT_INFLIGHT, ge=1, le=MAX_INFLIGHT)
    session_expiry_s: int = Field(default=DEFAULT_SESSION_EXPIRY_S, ge=0, le=7 * 86400)

    @field_validator("topic_filter")
    @classmethod
    def _filter(cls, v: str) -> str:
        # MQTT 5.0 §4.7.1: '#' only as the last level, '+' only as a whole level; a shared
        # subscription is made by meterray ($share/<group>/...), so the filter is the plain one.
        if v.startswith("$share/"):
            raise ValueError("give the plain topic filter; meterray subscribes as $share/<share_group>/<filter>")
        levels = v.split("/")
        for i, level in enumerate(levels):
            if "#" in level and (level != "#" or i != len(levels) - 1):
                raise ValueError(f"'#' must be a whole level at the end of the filter (MQTT 5.0 §4.7.1.2): {v!r}")
            if "+" in level and level != "+":
                raise ValueError(f"'+' must be a whole level (MQTT 5.0 §4.7.1.3): {v!r}")
        if "\x00" in v:
            raise ValueError("the topic filter contains a NUL character")
        return v

    @field_validator("share_group")
    @classmethod
    def _group(cls, v: str) -> str:
        if v and not _GROUP.match(v):
            raise ValueError(f"share_group {v!r}: 1..64 of A-Z a-z 0-9 . _ : @ - (no '/', '+' or '#')")
        return v

    @model_validator(mode="after")
    def _coherent(self) -> "MqttConnectionConfig":
        if self.payload_format != "json" and self.mapping != _DEFAULT_MAPPING:
            raise ValueError(f"mapping is only used by payload_format 'json', not {self.payload_format!r}")
        return self

    def to_domain(self) -> MqttConnection:
        return MqttConnection(self.connection_id, self.host, self.port, self.topic_filter, self.share_group,
                              self.subscribers, self.payload_format, self.mapping.to_domain(), self.auto_register,
                              self.inflight, self.session_expiry_s)


def mapping_dict(m: JsonMapping) -> dict[str, Any]:
    """A mapping as stored (JSON), the inverse of JsonMappingConfig(**...).to_domain()."""
    return {"device_from": m.device_from, "device_topic_level": m.device_topic_level, "device_field": m.device_field,
            "ts_field": m.ts_field, "ts_format": m.ts_format, "values_field": m.values_field,
            "names": dict(m.names), "scale": dict(m.scale)}


def connection_dict(c: MqttConnection) -> dict[str, Any]:
    return {"connection_id": c.connection_id, "host": c.host, "port": c.port, "topic_filter": c.topic_filter,
            "share_group": c.share_group, "subscribers": c.subscribers, "payload_format": c.payload_format,
            "mapping": mapping_dict(c.mapping), "auto_register": c.auto_register, "inflight": c.inflight,
            "session_expiry_s": c.session_expiry_s}


def validate_mqtt_connections(items: Iterable[MqttConnection | dict[str, Any]]) -> list[MqttConnection]:
    """Every connection checked (all problems reported at once); ids unique."""
    good: list[MqttConnection] = []
    problems: list[str] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        data = connection_dict(item) if isinstance(item, MqttConnection) else item
        cid = data.get("connection_id")
        what = f"MQTT connection {cid!r}" if cid else f"MQTT connection #{i + 1}"
        try:
            c = MqttConnectionConfig.model_validate(data)
        except ValidationError as err:
            problems += describe(err, what)
            continue
        if c.connection_id in seen:
            problems.append(f"{what}: appears twice")
        seen.add(c.connection_id)
        good.append(c.to_domain())
    if problems:
        raise MqttConfigError(problems)
    return good


def stored_connection(data: dict[str, Any]) -> tuple[MqttConnection | None, Sequence[str]]:
    """A stored row as a connection, or the problems that make it unusable (it is then not run)."""
    try:
        return MqttConnectionConfig.model_validate(data).to_domain(), ()
    except ValidationError as err:
        return None, describe(err, f"MQTT connection {data.get('connection_id')!r}")
