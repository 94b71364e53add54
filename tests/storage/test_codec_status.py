"""Partner status reports on the wire: round trip, and refusals with a reason."""
from __future__ import annotations

import time

import orjson
import pytest

from meterray.domain import DeviceEvent, DeviceStatus, StatusReport
from storage.kafka import codec

NOW = int(time.time() * 1000)


def test_a_status_report_round_trips_and_leaves_out_what_it_does_not_say() -> None:
    report = StatusReport("m-1", NOW, "partner-x", online=False, error_code="E17", tamper=True)
    raw = codec.encode(report)
    assert orjson.loads(raw)["status"] == {"online": False, "error_code": "E17", "tamper": True}
    assert codec.decode(raw) == report


@pytest.mark.parametrize(("status", "reason"), [
    ({"online": "yes"}, "online must be true, false or null"),
    ({"asleep": True}, "unknown field 'asleep'"),
    ({"error_code": "x" * 65}, "error_code of 65 characters exceeds the limit of 64"),
    ("offline", "status must be an object"),
])
def test_a_bad_status_report_is_refused_with_its_reason(status: object, reason: str) -> None:
    raw = orjson.dumps({"device_id": "m-1", "ts": NOW, "status": status})
    with pytest.raises(codec.CodecError, match=reason):
        codec.decode(raw)


def test_a_record_with_values_and_a_status_is_refused() -> None:
    raw = orjson.dumps({"device_id": "m-1", "ts": NOW, "status": {"online": True}, "values": []})
    with pytest.raises(codec.CodecError, match="not two"):
        codec.decode(raw)


def test_events_carry_their_reason_codes() -> None:
    event = DeviceEvent("m-1", NOW, "status", DeviceStatus.OFFLINE, DeviceStatus.DEGRADED, "timeout (...)",
                        ("timeout",))
    assert codec.decode_event(codec.encode_event(event)) == event
