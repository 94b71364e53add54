"""MQTT payloads → reading batches. Pure: a topic and bytes in, batches or a `DecodeError` out.

Three formats; a connection understands the first always and one of the others by configuration
(meterray.mqtt_config.MqttConnection.payload_format):

1. meterray's own, documented in the README ("MQTT"):
       topic   meterray/v1/<device_id>/readings  (optionally under a prefix: <prefix>/meterray/v1/...)
       payload {"ts": <ISO 8601 with offset, or epoch ms>, "values": {"<OBIS code>": <number>, ...}}
   Units are those of the OBIS vocabulary (meterray.quantities): energy in kWh, power in W, ...
2. `json`: any JSON object, read through a JsonMapping (device id from the topic or a field, the
   timestamp field and its format, values by OBIS code or by name, a scale per quantity).
3. `gateway`: one message, many meters and readings:
       {"ts": <epoch ms>, "meters": {"<device_id>": [[<ms after ts>, {"<OBIS code>": <number>, ...}], ...], ...}}

A message is decoded whole or refused whole: a reason names the first problem found, and the
shard dead-letters the message with it. What is accepted satisfies the Kafka codec's gate
(storage/kafka/codec.py): printable bounded ids, finite numbers, known OBIS codes, timestamps from
2000-01-01 to 24 h ahead (the same window and reasons as there).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec
import orjson

from meterray.describe import json_kind
from meterray.domain import ReadingBatch, Value
from meterray.mqtt_config import JsonMapping, MqttConnection
from meterray.quantities import QUANTITIES

TOPIC_ROOT = "meterray/v1"
MAX_PAYLOAD_BYTES = 256 * 1024  # a gateway batch of a few hundred meters; a single reading is ~150 bytes
MAX_BATCHES_PER_MESSAGE = 10_000
MAX_VALUES = 256  # as storage/kafka/codec.py: values per device batch
MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00Z, as storage/kafka/codec.py
MAX_AHEAD_MS = 24 * 3600 * 1000
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}$")  # meterray.config.Identifier
# meterray's topics may sit under a prefix (a site, a tenant, a test run): <prefix>/meterray/v1/<id>/readings.
_OWN_TOPIC = re.compile(r"^(?:.+/)?meterray/v1/([^/]+)/readings$")
_UNIT = {obis: q.unit for obis, q in QUANTITIES.items()}
_TOPIC_CACHE_MAX = 100_000  # topics whose device id was read and checked (a fleet's devices); then forgotten


class _OwnWire(msgspec.Struct, gc=False):
    """meterray's own payload as msgspec reads it in one pass, types checked in C (as the Kafka codec
    does, storage/kafka/codec.py): ~3x cheaper than orjson and a walk over the dict. Whatever does not
    fit (an ISO timestamp is fine, a bool value or a missing field is not) is read again by the
    orjson path, which says what is wrong."""

    ts: int | str
    values: dict[str, float]


_own_wire = msgspec.json.Decoder(_OwnWire)


class DecodeError(ValueError):
    """A message that cannot be read; it goes to the dead-letter topic with this reason."""


Decoder = Callable[[str, bytes, int], list[ReadingBatch]]  # (topic, payload, now_ms) → batches


def own_topic(device_id: str, prefix: str = "") -> str:
    return f"{prefix.rstrip('/') + '/' if prefix else ''}{TOPIC_ROOT}/{device_id}/readings"


def decoder_for(conn: MqttConnection) -> Decoder:
    """The decoder of a connection: meterray's format on its topics, the configured one elsewhere."""
    source = f"mqtt:{conn.connection_id}"[:256]
    other: Decoder | None = None
    if conn.payload_format == "json":
        mapping = conn.mapping
        other = lambda topic, payload, now_ms: decode_mapped(topic, payload, mapping, source, now_ms)  # noqa: E731
    elif conn.payload_format == "gateway":
        other = lambda topic, payload, now_ms: decode_gateway(payload, source, now_ms)  # noqa: E731

    own: dict[str, str] = {}  # topic → its device id, checked: the regular expressions once per device

    def decode(topic: str, payload: bytes, now_ms: int) -> list[ReadingBatch]:
        device_id = own.get(topic)
        if device_id is None:
            m = _OWN_TOPIC.match(topic)
            if m is not None:
                device_id = m.group(1)
                _check_device_id(device_id)
                if len(own) >= _TOPIC_CACHE_MAX:
                    own.clear()
                own[topic] = device_id
        if device_id is not None:
            return [_decode_own(device_id, payload, source, now_ms)]
        if other is None:
            raise DecodeError(f"topic {topic[:120]!r} is not meterray/v1/<device_id>/readings and connection "
                              f"{conn.connection_id!r} reads no other format (payload_format 'meterray')")
        return other(topic, payload, now_ms)

    return decode


def decode_own(device_id: str, payload: bytes, source: str, now_ms: int) -> ReadingBatch:
    """meterray/v1/<device_id>/readings: {"ts": ..., "values": {"<OBIS>": number}}."""
    _check_device_id(device_id)
    return _decode_own(device_id, payload, source, now_ms)


def _decode_own(device_id: str, payload: bytes, source: str, now_ms: int) -> ReadingBatch:
    """decode_own of a device id already checked."""
    if 0 < len(payload) <= MAX_PAYLOAD_BYTES:
        try:
            wire: _OwnWire | None = _own_wire.decode(payload)
        except msgspec.DecodeError:
            wire = None
        if wire is not None and 0 < len(wire.values) <= MAX_VALUES:
            out = []
            for obis, value in wire.values.items():
                unit = _UNIT.get(obis)
                if unit is None or not math.isfinite(value):
                    break
                out.append(Value(obis, value, unit, 0))
            else:
                return ReadingBatch(device_id, _ts(wire.ts, "auto", now_ms), source, tuple(out))
    doc = _object(payload)
    if "ts" not in doc:
        raise DecodeError("ts is missing")
    ts = _ts(doc["ts"], "auto", now_ms)
    values = doc.get("values")
    if not isinstance(values, dict):
        raise DecodeError(f"values must be an object of OBIS code → number, got {json_kind(values)}")
    return ReadingBatch(device_id, ts, source, _obis_values(values, "values"))


def decode_gateway(payload: bytes, source: str, now_ms: int) -> list[ReadingBatch]:
    """{"ts": <epoch ms>, "meters": {"<device_id>": [[<ms after ts>, {"<OBIS>": number}], ...]}}."""
    doc = _object(payload)
    base = doc.get("ts")
    if type(base) is not int:
        raise DecodeError(f"ts must be integer epoch milliseconds, got {json_kind(base)}")
    meters = doc.get("meters")
    if not isinstance(meters, dict) or not meters:
        raise DecodeError(f"meters must be a non-empty object of device id → readings, got {json_kind(meters)}")
    out: list[ReadingBatch] = []
    for device_id, readings in meters.items():
        _check_device_id(device_id)
        if not isinstance(readings, list) or not readings:
            raise DecodeError(f"meters[{device_id!r}] must be a non-empty list of [ms after ts, values], "
                              f"got {json_kind(readings)}")
        for i, r in enumerate(readings):
            if not (isinstance(r, list) and len(r) == 2 and type(r[0]) is int and isinstance(r[1], dict)):
                raise DecodeError(f"meters[{device_id!r}][{i}] must be [ms after ts, {{OBIS code: number}}], "
                                  f"got {json_kind(r)}")
            ts = _ts(base + r[0], "epoch_ms", now_ms)
            out.append(ReadingBatch(device_id, ts, source, _obis_values(r[1], f"meters[{device_id!r}][{i}]")))
            if len(out) > MAX_BATCHES_PER_MESSAGE:
                raise DecodeError(f"more than {MAX_BATCHES_PER_MESSAGE} readings in one gateway message")
    return out


def decode_mapped(topic: str, payload: bytes, m: JsonMapping, source: str, now_ms: int) -> list[ReadingBatch]:
    """A JSON object read through a field mapping (meterray.mqtt_config.JsonMapping)."""
    doc = _object(payload)
    if m.device_from == "topic":
        levels = topic.split("/")
        try:
            device_id = levels[m.device_topic_level]
        except IndexError:
            raise DecodeError(f"topic {topic[:120]!r} has no level {m.device_topic_level} for the device id") from None
    else:
        raw_id = _field(doc, m.device_field)
        if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool):
            raise DecodeError(f"{m.device_field} must be the device id (a string), got {json_kind(raw_id)}")
        device_id = str(raw_id)
    _check_device_id(device_id)
    ts = _ts(_field(doc, m.ts_field), m.ts_format, now_ms, m.ts_field)
    container = doc if not m.values_field else _field(doc, m.values_field)
    if not isinstance(container, dict):
        raise DecodeError(f"{m.values_field or 'the message'} must be an object of values, got {json_kind(container)}")
    names, scale = dict(m.names), dict(m.scale)
    skip = {m.ts_field, m.device_field} if not m.values_field else set()
    picked: dict[str, Any] = {}
    for key, value in container.items():
        obis = names.get(key) or (key if key in _UNIT else None)
        if obis is None or key in skip:
            continue  # a field we do not store (a gateway may send more than meterray keeps)
        if obis in picked:
            raise DecodeError(f"quantity {obis} is given twice (as {key!r} and another field)")
        picked[obis] = value
    if not picked:
        raise DecodeError(f"no value in {m.values_field or 'the message'} is an OBIS code or a mapped name "
                          f"(mapped: {sorted(names) or 'none'})")
    values = _obis_values(picked, m.values_field or "values")
    if scale:
        values = tuple(Value(v.quantity, v.value * scale[v.quantity], v.unit, v.quality) if v.quantity in scale else v
                       for v in values)
        bad = next((v for v in values if not math.isfinite(v.value)), None)
        if bad is not None:
            raise DecodeError(f"{bad.quantity} is not finite after scaling")
    return [ReadingBatch(device_id, ts, source, values)]


def _object(payload: bytes) -> dict[str, Any]:
    if not payload:
        raise DecodeError("empty payload: a message must be a JSON object")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise DecodeError(f"payload of {len(payload)} bytes exceeds the limit of {MAX_PAYLOAD_BYTES}")
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        raise DecodeError(f"not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise DecodeError(f"payload must be a JSON object, got {json_kind(doc)}")
    return doc


def _field(doc: dict[str, Any], path: str) -> Any:
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise DecodeError(f"field {path!r} is missing")
        cur = cur[part]
    return cur


def _obis_values(values: dict[str, Any], where: str) -> tuple[Value, ...]:
    if not values:
        raise DecodeError(f"{where} holds no values")
    if len(values) > MAX_VALUES:
        raise DecodeError(f"{len(values)} values in one reading exceed the limit of {MAX_VALUES}")
    out = []
    for obis, value in values.items():
        unit = _UNIT.get(obis)
        kind = type(value)
        if unit is not None and (kind is int or (kind is float and math.isfinite(value))):
            out.append(Value(obis, float(value), unit, 0))
            continue
        if unit is None:
            raise DecodeError(f"{where}: unknown OBIS code {obis[:40]!r}; known codes are listed in "
                              "meterray.quantities")
        raise DecodeError(f"{where}: value of {obis} must be a finite number, got {json_kind(value)}")
    return tuple(out)


def _ts(raw: Any, fmt: str, now_ms: int, name: str = "ts") -> int:
    if fmt == "iso8601" or (fmt == "auto" and isinstance(raw, str)):
        if not isinstance(raw, str):
            raise DecodeError(f"{name} must be an ISO 8601 string, got {json_kind(raw)}")
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise DecodeError(f"{name} {raw[:40]!r} is not an ISO 8601 timestamp") from None
        if parsed.tzinfo is None:
            raise DecodeError(f"{name} {raw[:40]!r} has no UTC offset (add Z or +hh:mm): local time is ambiguous")
        ts = int(round(parsed.timestamp() * 1000))
    elif fmt == "epoch_s":
        if type(raw) not in (int, float) or not math.isfinite(raw):
            raise DecodeError(f"{name} must be epoch seconds (a number), got {json_kind(raw)}")
        ts = int(round(raw * 1000))
    else:
        if type(raw) is not int:
            raise DecodeError(f"{name} must be integer epoch milliseconds or an ISO 8601 string, got {json_kind(raw)}")
        ts = raw
    if not MIN_TS_MS <= ts <= now_ms + MAX_AHEAD_MS:
        raise DecodeError(f"{name} {ts} is outside the accepted window (2000-01-01T00:00Z to 24 h from now): "
                          "not the declared format, or a clock fault")
    return ts


def _check_device_id(device_id: Any) -> None:
    if not isinstance(device_id, str) or not _DEVICE_ID.match(device_id):
        raise DecodeError(f"device id {str(device_id)[:60]!r} is not 1..128 printable characters "
                          "(A-Z a-z 0-9 . _ : @ / + -, starting with a letter or digit)")
