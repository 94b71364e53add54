import pytest

from meterray.domain import DeviceEvent, DeviceStatus, FailureKind, PollFailure, ReadingBatch, Value
from storage.kafka import codec


def test_reading_batch_round_trip() -> None:
    batch = ReadingBatch("m-1", 1_764_000_000_000, "modbus://10.0.0.5:502/3",
                         (Value("1-0:1.8.0", 1234.5, "kWh", 0), Value("1-0:32.7.0", 229.9, "V", 16)))
    assert codec.decode(codec.encode(batch)) == batch


def test_failure_round_trip() -> None:
    failure = PollFailure("m-1", 1_764_000_000_000, "modbus://h:502", FailureKind.EXCEPTION_CODE, "code 2")
    assert codec.decode(codec.encode(failure)) == failure


def test_event_round_trip() -> None:
    event = DeviceEvent("m-1", 5, "status", DeviceStatus.OFFLINE, DeviceStatus.ONLINE, "timeout: no answer")
    assert codec.decode_event(codec.encode_event(event)) == event


@pytest.mark.parametrize("raw, reason", [
    (b"not json", "JSONDecodeError"),
    (b'{"ts": 1, "values": []}', "device_id"),
    (b'{"device_id": "", "ts": 1, "values": []}', "non-empty"),
    (b'{"device_id": "m", "ts": "yesterday", "values": []}', "epoch milliseconds"),
    (b'{"device_id": "m", "ts": 1, "values": [["1-0:1.8.0", "lots", "kWh", 0]]}', "ValueError"),
    (b'{"device_id": "m", "ts": 1, "failure": {"kind": "gremlins"}}', "gremlins"),
    (None, "JSONDecodeError"),
])
def test_undecodable_messages_say_why(raw: bytes | None, reason: str) -> None:
    with pytest.raises(codec.CodecError, match=reason):
        codec.decode(raw)


def test_dead_letter_keeps_reason_and_raw_bytes() -> None:
    record = codec.decode_dead_letter(codec.encode_dead_letter("bad frame", b"\x00\xff", device_id="m-1"))
    assert record == {"reason": "bad frame", "raw": b"\x00\xff", "device_id": "m-1"}
