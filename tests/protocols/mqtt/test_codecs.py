"""MQTT payload codecs: each format decoded to the batches a user would expect, and every kind of
bad message refused with a reason that names the problem."""
from __future__ import annotations

import orjson
import pytest

from meterray.mqtt_config import JsonMapping, MqttConnection
from protocols.mqtt.codecs import DecodeError, decoder_for

NOW = 1_764_146_400_000  # 2025-11-26T08:40:00Z
ENERGY, POWER, VOLTAGE = "1-0:1.8.0", "1-0:16.7.0", "1-0:32.7.0"


def conn(fmt: str = "meterray", mapping: JsonMapping | None = None) -> MqttConnection:
    return MqttConnection("c1", "127.0.0.1", 1883, "#", payload_format=fmt,  # type: ignore[arg-type]
                          mapping=mapping or JsonMapping())


def test_own_format_with_epoch_ms_and_iso_timestamps() -> None:
    decode = decoder_for(conn())
    payload = orjson.dumps({"ts": NOW, "values": {ENERGY: 1234.5, POWER: -20, VOLTAGE: 231.2}})
    [b] = decode("meterray/v1/meter-7/readings", payload, NOW)
    assert (b.device_id, b.ts_ms, b.source) == ("meter-7", NOW, "mqtt:c1")
    assert {(v.quantity, v.value, v.unit) for v in b.values} == {
        (ENERGY, 1234.5, "kWh"), (POWER, -20.0, "W"), (VOLTAGE, 231.2, "V")}
    [iso] = decode("meterray/v1/meter-7/readings", b'{"ts": "2025-11-26T11:40:00+03:00", "values": {"1-0:1.8.0": 1}}',
                   NOW)
    assert iso.ts_ms == NOW
    [prefixed] = decode("site-3/meterray/v1/meter-8/readings", payload, NOW)  # under a prefix
    assert prefixed.device_id == "meter-8"


@pytest.mark.parametrize(("topic", "payload", "reason"), [
    ("meterray/v1/m/readings", b"", "empty payload"),
    ("meterray/v1/m/readings", b"{not json", "not valid JSON"),
    ("meterray/v1/m/readings", b"[1, 2]", "must be a JSON object, got array"),
    ("meterray/v1/m/readings", b'{"values": {"1-0:1.8.0": 1}}', "ts is missing"),
    ("meterray/v1/m/readings", b'{"ts": 12, "values": {"1-0:1.8.0": 1}}', "outside the accepted window"),
    ("meterray/v1/m/readings", b'{"ts": "2025-11-26T08:40:00", "values": {"1-0:1.8.0": 1}}', "no UTC offset"),
    ("meterray/v1/m/readings", b'{"ts": "yesterday", "values": {"1-0:1.8.0": 1}}', "not an ISO 8601"),
    ("meterray/v1/m/readings", b'{"ts": 1764146400000, "values": {"9.9.9": 1}}', "unknown OBIS code '9.9.9'"),
    ("meterray/v1/m/readings", b'{"ts": 1764146400000, "values": {"1-0:1.8.0": "12"}}', "must be a finite number"),
    ("meterray/v1/m/readings", b'{"ts": 1764146400000, "values": {}}', "holds no values"),
    ("meterray/v1/m/readings", b'{"ts": 1764146400000, "values": [1]}', "values must be an object"),
    ("meterray/v1/bad id/readings", b'{"ts": 1764146400000, "values": {"1-0:1.8.0": 1}}', "device id 'bad id'"),
    ("other/topic", b'{"ts": 1764146400000}', "reads no other format"),
])
def test_own_format_refusals_name_the_problem(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason.replace("(", r"\(").replace("[", r"\[")):
        decoder_for(conn())(topic, payload, NOW)


def test_gateway_batch_many_meters_and_readings() -> None:
    decode = decoder_for(conn("gateway"))
    payload = orjson.dumps({"ts": NOW, "meters": {"a": [[0, {ENERGY: 1.0}], [1000, {ENERGY: 1.5, POWER: 3}]],
                                                 "b": [[500, {VOLTAGE: 230}]]}})
    batches = decode("site/gw-1/batch", payload, NOW)
    assert [(b.device_id, b.ts_ms, len(b.values)) for b in batches] == [
        ("a", NOW, 1), ("a", NOW + 1000, 2), ("b", NOW + 500, 1)]
    # meterray's own topics are still understood on a gateway connection
    own = decode("meterray/v1/x/readings", b'{"ts": 1764146400000, "values": {"1-0:1.8.0": 1}}', NOW)
    assert own[0].device_id == "x"
    with pytest.raises(DecodeError, match=r"meters\['a'\]\[0\] must be"):
        decode("site/gw-1/batch", b'{"ts": 1764146400000, "meters": {"a": [[0]]}}', NOW)
    with pytest.raises(DecodeError, match="meters must be a non-empty object"):
        decode("site/gw-1/batch", b'{"ts": 1764146400000, "meters": {}}', NOW)


def test_json_mapping_by_name_from_payload_with_scale_and_epoch_seconds() -> None:
    mapping = JsonMapping(device_from="payload", device_field="meta.serial", ts_field="time", ts_format="epoch_s",
                          values_field="data", names=(("energy_wh", ENERGY), ("p", POWER)),
                          scale=((ENERGY, 0.001),))
    decode = decoder_for(conn("json", mapping))
    payload = orjson.dumps({"meta": {"serial": 4711}, "time": NOW / 1000,
                            "data": {"energy_wh": 123456, "p": 50.5, "rssi": -70}})
    [b] = decode("vendor/anything", payload, NOW)
    assert b.device_id == "4711" and b.ts_ms == NOW
    assert {(v.quantity, v.value) for v in b.values} == {(ENERGY, 123.456), (POWER, 50.5)}  # rssi ignored
    with pytest.raises(DecodeError, match="field 'meta.serial' is missing"):
        decode("vendor/x", b'{"time": 1764146400, "data": {"p": 1}}', NOW)
    with pytest.raises(DecodeError, match="no value in data is an OBIS code or a mapped name"):
        decode("vendor/x", b'{"meta": {"serial": "s"}, "time": 1764146400, "data": {"rssi": 1}}', NOW)


def test_json_mapping_device_from_topic_obis_keys_at_top_level_iso() -> None:
    mapping = JsonMapping(device_from="topic", device_topic_level=1, ts_field="t", ts_format="iso8601",
                          values_field="")
    decode = decoder_for(conn("json", mapping))
    [b] = decode("site/meter-9/state", b'{"t": "2025-11-26T08:40:00Z", "1-0:32.7.0": 229.5}', NOW)
    assert (b.device_id, b.ts_ms, b.values[0].quantity, b.values[0].value) == ("meter-9", NOW, VOLTAGE, 229.5)
    with pytest.raises(DecodeError, match="has no level 1"):
        decode("flat", b'{"t": "2025-11-26T08:40:00Z", "1-0:32.7.0": 229.5}', NOW)
