"""The connection document: both kinds checked by their existing models, names and owner beside them,
every problem listed at once."""
from __future__ import annotations

import uuid

import pytest

from meterray.config import ConfigError
from meterray.connections import parse_connection

PROFILES = ("sdm630", "wb-map3e")


def _doc(**extra: object) -> dict:
    return {"kind": "modbus_tcp", "connection_id": "gw", "host": "10.0.0.7", "port": 502, "poll_interval_s": 5,
            "timeout_s": 1, "devices": [{"device_id": "m1", "unit_id": 1, "profile": "sdm630", "name": "Pump"},
                                        {"device_id": "m2", "unit_id": 2, "profile": "wb-map3e"}], **extra}


def test_a_modbus_document_round_trips_with_its_names() -> None:
    org = uuid.uuid4()
    doc = parse_connection(_doc(organisation_id=str(org)), PROFILES)
    assert doc.kind == "modbus_tcp" and doc.organisation_id == org and doc.device_ids == ["m1", "m2"]
    shown = doc.document()
    assert [d["name"] for d in shown["devices"]] == ["Pump", "m2"]
    again = parse_connection(shown, PROFILES)  # what GET shows is what PUT takes
    assert (again.modbus, dict(again.names)) == (doc.modbus, {"m1": "Pump", "m2": "m2"})


def test_every_problem_is_listed_with_its_field() -> None:
    bad = _doc(organisation_id="acme", port=0, devices=[{"device_id": "m1", "unit_id": 248, "profile": "sdm630",
                                                         "name": ""}])
    with pytest.raises(ConfigError) as err:
        parse_connection(bad, PROFILES)
    problems = err.value.problems
    assert len(problems) == 4, problems
    assert problems[0] == "organisation_id: 'acme' is not a UUID"
    assert any(p.startswith("connection 'gw': devices[0].name:") for p in problems)
    assert any("port" in p for p in problems) and any("unit id 248 is reserved" in p for p in problems)


def test_kind_is_required_and_mqtt_documents_use_the_mqtt_model() -> None:
    with pytest.raises(ConfigError, match="kind: must be one of 'modbus_tcp', 'mqtt', got None"):
        parse_connection({"connection_id": "x"}, PROFILES)
    doc = parse_connection({"kind": "mqtt", "connection_id": "q", "host": "127.0.0.1", "topic_filter": "a/+"},
                           PROFILES)
    assert doc.mqtt is not None and doc.document()["port"] == 1883 and doc.device_ids == []
    with pytest.raises(ConfigError, match="subscribers"):
        parse_connection({"kind": "mqtt", "connection_id": "q", "host": "h", "topic_filter": "a", "subscribers": 99},
                         PROFILES)
