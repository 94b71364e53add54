"""Wire format of the pipeline's Kafka messages (JSON via orjson, one message per device batch)."""
from __future__ import annotations

import base64
from typing import Any

import orjson

from meterray.domain import DeviceEvent, DeviceStatus, FailureKind, PollFailure, ReadingBatch, Value


class CodecError(ValueError):
    """A message that cannot be decoded; it goes to the dead-letter topic with this reason."""


def encode(item: ReadingBatch | PollFailure) -> bytes:
    if isinstance(item, ReadingBatch):
        return orjson.dumps(
            {
                "device_id": item.device_id,
                "ts": item.ts_ms,
                "source": item.source,
                "values": [(v.quantity, v.value, v.unit, v.quality) for v in item.values],
            }
        )
    return orjson.dumps(
        {
            "device_id": item.device_id,
            "ts": item.ts_ms,
            "source": item.source,
            "failure": {"kind": item.kind.value, "detail": item.detail},
        }
    )


def decode(raw: bytes | None) -> ReadingBatch | PollFailure:
    try:
        doc = orjson.loads(raw or b"")
        device_id, ts, source = doc["device_id"], doc["ts"], doc.get("source", "")
        if not isinstance(device_id, str) or not device_id:
            raise CodecError("device_id must be a non-empty string")
        if not isinstance(ts, int):
            raise CodecError("ts must be integer epoch milliseconds")
        if "failure" in doc:
            f = doc["failure"]
            return PollFailure(device_id, ts, source, FailureKind(f["kind"]), str(f.get("detail", "")))
        values = tuple(
            Value(q, float(v), u, int(flags)) for q, v, u, flags in doc["values"]
        )
        return ReadingBatch(device_id, ts, source, values)
    except CodecError:
        raise
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CodecError(f"{type(err).__name__}: {err}") from None


def encode_dead_letter(reason: str, raw: bytes | None, **context: Any) -> bytes:
    """A dead-letter record: why, where it came from, and the raw bytes (base64)."""
    return orjson.dumps(
        {"reason": reason, "raw_b64": base64.b64encode(raw or b"").decode(), **context}
    )


def decode_dead_letter(raw: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(raw)
    doc["raw"] = base64.b64decode(doc.pop("raw_b64"))
    return doc


def encode_event(event: DeviceEvent) -> bytes:
    return orjson.dumps(
        {
            "device_id": event.device_id,
            "ts": event.ts_ms,
            "kind": event.kind,
            "status": event.status.value,
            "previous": event.previous.value,
            "reason": event.reason,
        }
    )


def decode_event(raw: bytes) -> DeviceEvent:
    d = orjson.loads(raw)
    return DeviceEvent(
        d["device_id"], d["ts"], d["kind"], DeviceStatus(d["status"]), DeviceStatus(d["previous"]), d["reason"]
    )
