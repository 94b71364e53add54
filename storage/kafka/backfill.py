"""Backfill requests: a gap in a device's half-hours that its source can still resend.

One JSON record per gap on the `backfill-requests` topic, keyed by device id and sent to the
device's partition (topics.partition_for), so a source's consumer sees a device's requests in order.
Requests are at-least-once: the same gap is requested again on every scan until it is filled, so a
source deduplicates on (device_id, quantity, start, end) and treats a request as "send what you hold
for this range"; readings sent again are harmless (the archive keeps each key once).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import orjson

from meterray.settings import Settings
from storage.kafka import topics
from storage.kafka.producer import OutMessage


@dataclass(frozen=True, slots=True)
class BackfillRequest:
    device_id: str
    protocol: str  # which kind of source should act (a partner's, a meter archive's)
    quantity: str  # OBIS code of the register with the gap
    start: str  # ISO 8601 UTC, inclusive
    end: str  # exclusive
    half_hours: int
    estimated_by: str | None  # how the gap is filled meanwhile: linear, like_day, or None (missing)
    requested_at: str


def encode(request: BackfillRequest) -> bytes:
    return orjson.dumps(asdict(request))


_TYPES: dict[str, tuple[type, ...]] = {f: (str,) for f in ("device_id", "protocol", "quantity", "start", "end",
                                                             "requested_at")}
_TYPES.update(half_hours=(int,), estimated_by=(str, type(None)))


def decode(raw: bytes | None) -> BackfillRequest:
    """A request as `encode` wrote it; ValueError (saying what is wrong) for anything else."""
    try:
        doc: Any = orjson.loads(raw or b"")
    except orjson.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err})") from None
    if not isinstance(doc, dict) or doc.keys() != _TYPES.keys():
        found = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"a request is an object with exactly {sorted(_TYPES)}, got {found}")
    wrong = sorted(k for k, v in doc.items() if not isinstance(v, _TYPES[k]) or isinstance(v, bool))
    if wrong:
        raise ValueError(f"wrong type of {wrong}")
    return BackfillRequest(**doc)


def messages(settings: Settings, requests: list[BackfillRequest]) -> list[OutMessage]:
    return [(settings.topic(topics.BACKFILL_REQUESTS), topics.partition_for(r.device_id, settings.kafka_partitions),
             r.device_id.encode(), encode(r)) for r in requests]
