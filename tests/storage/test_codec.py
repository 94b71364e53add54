import base64

import orjson
import pytest

from meterray.domain import DeviceEvent, DeviceStatus, FailureKind, PollFailure, Quality, ReadingBatch, Value
from storage.kafka import codec

NOW = 1_764_000_000_000
GOOD_VALUE = ["1-0:1.8.0", 12.5, "kWh", 0]


def _doc(**fields: object) -> bytes:
    doc = {"device_id": "m-1", "ts": NOW, "source": "test", "values": [GOOD_VALUE]}
    doc.update(fields)
    return orjson.dumps(doc)


def test_reading_batch_round_trip() -> None:
    batch = ReadingBatch("m-1", NOW, "modbus://10.0.0.5:502/3",
                         (Value("1-0:1.8.0", 1234.5, "kWh", 0), Value("1-0:32.7.0", 229.9, "V", 16)))
    assert codec.decode(codec.encode(batch), NOW) == batch


def test_failure_round_trip() -> None:
    failure = PollFailure("m-1", NOW, "modbus://h:502", FailureKind.EXCEPTION_CODE, "code 2")
    assert codec.decode(codec.encode(failure), NOW) == failure


def test_event_round_trip() -> None:
    event = DeviceEvent("m-1", 5, "status", DeviceStatus.OFFLINE, DeviceStatus.ONLINE, "timeout: no answer")
    assert codec.decode_event(codec.encode_event(event)) == event


def test_integer_values_and_every_known_flag_are_accepted() -> None:
    every_flag = int(sum(int(f) for f in Quality))
    batch = codec.decode(_doc(values=[["1-0:1.8.0", 7, "kWh", every_flag], ["1-0:13.7.0", 0.98, "", 0]]), NOW)
    assert isinstance(batch, ReadingBatch)
    assert batch.values == (Value("1-0:1.8.0", 7.0, "kWh", every_flag), Value("1-0:13.7.0", 0.98, "", 0))
    assert type(batch.values[0].value) is float


def test_a_failure_detail_may_span_lines() -> None:
    failure = PollFailure("m-1", NOW, "modbus://h:502", FailureKind.BAD_RESPONSE, "two problems:\n\tone\r\n\ttwo")
    assert codec.decode(codec.encode(failure), NOW) == failure


def test_timestamp_window_edges() -> None:
    assert codec.decode(_doc(ts=codec.MIN_TS_MS), NOW).ts_ms == codec.MIN_TS_MS
    assert codec.decode(_doc(ts=NOW + codec.MAX_AHEAD_MS), NOW).ts_ms == NOW + codec.MAX_AHEAD_MS
    for ts in (codec.MIN_TS_MS - 1, NOW + codec.MAX_AHEAD_MS + 1):
        with pytest.raises(codec.CodecError, match="outside the accepted window"):
            codec.decode(_doc(ts=ts), NOW)


@pytest.mark.parametrize("raw, reason", [
    (None, "empty message"),
    (b"", "empty message"),
    (b"not json", "not valid JSON"),
    (b'{"device_id": "m-1", "ts": 1764000000000, "values": [["1-0:1.8', "not valid JSON"),  # truncated
    (b"[1, 2]", "must be a JSON object, got array"),
    (b'{"ts": 1764000000000, "values": []}', "device_id is missing"),
    (_doc(device_id=""), "non-empty"),
    (_doc(device_id=7), "device_id must be a string, got integer 7"),
    (_doc(device_id="m" * 129), "device_id of 129 characters exceeds the limit of 128"),
    (_doc(device_id="m\x00-1"), "device_id contains the control character '\\\\x00'"),
    (_doc(source="sim\x00"), "source contains the control character"),
    (_doc(source="s" * 300), "source of 300 characters"),
    (_doc(ts="yesterday"), "ts must be integer epoch milliseconds, got string 'yesterday'"),
    (_doc(ts=1764000000000.5), "ts must be integer epoch milliseconds, got number"),
    (_doc(ts=True), "got boolean"),
    (_doc(ts=-5), "ts -5 is outside the accepted window"),
    (_doc(ts=0), "outside the accepted window"),
    (_doc(ts=10**18), "outside the accepted window"),
    (_doc(ts=10**18).replace(b"1000000000000000000", b"1" + b"0" * 30), "ts must be integer epoch milliseconds, got"),
    (_doc(ts=1_764_000_000), "outside the accepted window"),  # seconds, not milliseconds
    (_doc(values=None), "values must be a list"),
    (_doc(values=[["1-0:1.8.0", 1.0, "kWh"]]), r"values\[0\] must be \[quantity, value, unit, flags\]"),
    (_doc(values=[["1-0:1.8.0", "lots", "kWh", 0]]), "value of 1-0:1.8.0 must be a number, got string 'lots'"),
    (_doc(values=[["1-0:1.8.0", None, "kWh", 0]]), "value of 1-0:1.8.0 must be a number, got null"),
    (_doc(values=[["1-0:1.8.0", True, "kWh", 0]]), "got boolean"),
    (_doc(values=[["1-0:1.8.0", 1.0, None, 0]]), "unit of 1-0:1.8.0 must be a string, got null"),
    (_doc(values=[["1-0:1.8.0", 1.0, "Wh", 0]]), "unit 'Wh' does not match 1-0:1.8.0 .* which is in 'kWh'"),
    (_doc(values=[["9-9:9.9.9", 1.0, "kWh", 0]]), "unknown OBIS quantity '9-9:9.9.9'"),
    (_doc(values=[[None, 1.0, "kWh", 0]]), "quantity must be an OBIS code string, got null"),
    (_doc(values=[GOOD_VALUE, GOOD_VALUE]), "appears twice"),
    (_doc(values=[["1-0:1.8.0", 1.0, "kWh", 1 << 20]]), "unknown quality flag bits 0x100000"),
    (_doc(values=[["1-0:1.8.0", 1.0, "kWh", -1]]), "must be a non-negative integer"),
    (_doc(values=[["1-0:1.8.0", 1.0, "kWh", 1.5]]), "must be a non-negative integer, got number"),
    (_doc(values=[GOOD_VALUE] * 300), "300 values in one batch exceed the limit of 256"),
    (b'{"device_id": "m-1", "ts": 1764000000000, "values": [["1-0:1.8.0", NaN, "kWh", 0]]}', "NaN or Infinity"),
    (b'{"device_id": "m-1", "ts": 1764000000000, "values": [["1-0:1.8.0", -Infinity, "kWh", 0]]}', "NaN or Inf"),
    (b'{"device_id": "m-1", "ts": 1764000000000, "values": [["1-0:1.8.0", 1e309, "kWh", 0]]}', "infinity"),
    (_doc(values=[["1-0:1.8.0", "x" * 1_000_000, "kWh", 0]]), "exceeds the 65536-byte limit"),
    (_doc(failure={"kind": "gremlins"}), "unknown failure kind 'gremlins'"),
    (_doc(failure="down"), "failure must be an object"),
    (_doc(failure={"kind": "timeout", "detail": "no\x00answer"}), "detail contains the control character"),
    (_doc(failure={"kind": "timeout", "detail": 5}), "detail must be a string"),
])
def test_refused_records_say_why(raw: bytes | None, reason: str) -> None:
    with pytest.raises(codec.CodecError, match=reason):
        codec.decode(raw, NOW)


def test_dead_letter_keeps_reason_and_raw_bytes() -> None:
    record = codec.decode_dead_letter(codec.encode_dead_letter("bad frame", b"\x00\xff", device_id="m-1"))
    assert record == {"reason": "bad frame", "raw": b"\x00\xff", "device_id": "m-1"}


def test_dead_letter_of_a_huge_record_keeps_its_head_and_size() -> None:
    raw = b"x" * 2_000_000
    encoded = codec.encode_dead_letter("too big", raw)
    assert len(encoded) < 100_000  # fits in a Kafka record
    record = codec.decode_dead_letter(encoded)
    assert record["raw_bytes"] == 2_000_000 and record["raw_truncated"] is True
    assert record["raw"] == raw[:codec.MAX_DEAD_LETTER_RAW_BYTES]
    assert base64.b64encode(record["raw"])  # still valid bytes


def test_a_backfill_request_round_trips_and_anything_else_is_refused_with_why() -> None:
    from storage.kafka import backfill

    r = backfill.BackfillRequest("d-1", "partner_http", "1-0:1.8.0", "2026-11-20T10:00:00+00:00",
                                 "2026-11-20T13:00:00+00:00", 6, None, "2026-11-20T14:00:00+00:00")
    assert backfill.decode(backfill.encode(r)) == r
    for raw, why in ((b"{", "not JSON"), (b"[]", "exactly"), (b'{"device_id": "d"}', "exactly"),
                     (backfill.encode(r).replace(b'"half_hours":6', b'"half_hours":"6"'), "half_hours"),
                     (backfill.encode(r).replace(b'"device_id":"d-1"', b'"device_id":true'), "device_id"),
                     (None, "not JSON")):
        with pytest.raises(ValueError, match=why):
            backfill.decode(raw)
