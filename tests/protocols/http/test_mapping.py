"""Records → readings / device status, and every refusal with its reason (nothing dropped silently)."""
from __future__ import annotations

from meterray.domain import FailureKind, PollFailure, ReadingBatch
from meterray.partners import ReadingMapping, StatusMapping
from protocols.http.mapping import map_records, timestamp_ms

DEVICES = {"m-1": "p-m-1", "m-2": "p-m-2"}
LONG = ReadingMapping(device="meter", timestamp="time", quantity="quantity",
                      quantity_map={"energy": "1-0:1.8.0", "power": "1-0:16.7.0"}, value="value", unit="unit")
T0 = "2026-11-26T08:00:00Z"
T0_MS = 1_795_680_000_000


def test_long_records_of_one_device_and_instant_make_one_batch_in_meterray_units() -> None:
    records = [{"meter": "m-1", "time": T0, "quantity": "energy", "value": "1500", "unit": "Wh"},
               {"meter": "m-1", "time": T0, "quantity": "power", "value": 230.5, "unit": "W"},
               {"meter": "m-2", "time": T0_MS + 1000, "quantity": "1-0:1.8.0", "value": 2, "unit": "kWh"}]
    out = map_records(records, LONG, None, DEVICES, "partner://p/r")
    assert not out.refused and out.readings == 3
    by = {(b.device_id, b.ts_ms): {v.quantity: (v.value, v.unit) for v in b.values} for b in out.batches}
    assert by == {("p-m-1", T0_MS): {"1-0:1.8.0": (1.5, "kWh"), "1-0:16.7.0": (230.5, "W")},
                  ("p-m-2", T0_MS + 1000): {"1-0:1.8.0": (2.0, "kWh")}}
    assert out.max_ts_ms == T0_MS + 1000


def test_wide_records_with_scale() -> None:
    m = ReadingMapping.model_validate({"device": "id", "timestamp": "ts", "values": [
        {"quantity": "1-0:1.8.0", "field": "e.total", "unit": "Wh"},
        {"quantity": "1-0:32.7.0", "field": "u1", "scale": 0.1}]})
    out = map_records([{"id": "m-1", "ts": T0_MS // 1000, "e": {"total": 2000}, "u1": 2301},
                       {"id": "m-2", "ts": T0_MS // 1000, "e": {"total": 10}}], m, None, DEVICES, "s")
    values = {b.device_id: {v.quantity: v.value for v in b.values} for b in out.batches}
    assert values == {"p-m-1": {"1-0:1.8.0": 2.0, "1-0:32.7.0": 230.1}, "p-m-2": {"1-0:1.8.0": 0.01}}


def test_each_bad_record_is_refused_with_its_reason_and_the_rest_go_through() -> None:
    good = {"meter": "m-1", "time": T0, "quantity": "energy", "value": 1, "unit": "Wh"}
    bad = [
        ({**good, "meter": "m-9"}, "unknown device 'm-9'"),
        ({**good, "time": "yesterday"}, "neither ISO 8601 nor epoch"),
        ({**good, "value": "n/a"}, "must be a number"),
        ({**good, "value": "NaN"}, "not finite"),
        ({**good, "quantity": "volume"}, "neither an OBIS code nor in quantity_map"),
        ({**good, "unit": "kvarh"}, "cannot be converted to 'kWh'"),
        (["not", "an", "object"], "must be an object"),
    ]
    out = map_records([good] + [r for r, _ in bad], LONG, None, DEVICES, "s")
    assert out.readings == 1
    assert len(out.refused) == len(bad)
    for (_, words), (_, _, reason) in zip(bad, out.refused, strict=True):
        assert words in reason
    assert out.refused[0][0] is None and out.refused[1][0] == "p-m-1"


def test_a_quantity_twice_at_one_instant_is_refused_not_overwritten() -> None:
    r = {"meter": "m-1", "time": T0, "quantity": "energy", "value": 1, "unit": "Wh"}
    out = map_records([r, {**r, "value": 2}], LONG, None, DEVICES, "s")
    assert out.batches[0].values[0].value == 0.001 and "appears twice" in out.refused[0][2]


def test_status_records_become_online_batches_or_typed_failures() -> None:
    m = StatusMapping(device="meter", timestamp="time", status="state", error_code="error", battery="battery",
                      tamper="tamper")
    recs = [{"meter": "m-1", "time": T0, "state": "online", "error": "0", "battery": 80, "tamper": False},
            {"meter": "m-2", "time": T0, "state": "offline", "error": "E42", "battery": 5, "tamper": "true"},
            {"meter": "m-1", "time": T0_MS + 1, "state": "online", "error": "0", "battery": 10, "tamper": False}]
    out = map_records(recs, None, m, DEVICES, "s")
    assert out.batches == [ReadingBatch("p-m-1", T0_MS, "s", ())]
    assert out.failures == [
        PollFailure("p-m-2", T0_MS, "s", FailureKind.DEVICE_OFFLINE,
                    "partner reports offline; error code E42; battery low (5 %); tamper"),
        PollFailure("p-m-1", T0_MS + 1, "s", FailureKind.DEVICE_ALARM, "battery low (10 %)")]


def test_timestamps_iso_naive_utc_seconds_and_milliseconds() -> None:
    assert timestamp_ms("2026-11-26T08:00:00") == timestamp_ms("2026-11-26T09:00:00+01:00") == T0_MS
    assert timestamp_ms(T0_MS / 1000) == timestamp_ms(str(T0_MS)) == T0_MS
