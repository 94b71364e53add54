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


def decode(raw: bytes) -> BackfillRequest:
    doc: dict[str, Any] = orjson.loads(raw)
    return BackfillRequest(**doc)


def messages(settings: Settings, requests: list[BackfillRequest]) -> list[OutMessage]:
    return [(settings.topic(topics.BACKFILL_REQUESTS), topics.partition_for(r.device_id, settings.kafka_partitions),
             r.device_id.encode(), encode(r)) for r in requests]
