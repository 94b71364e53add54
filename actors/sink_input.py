"""What a sink of the `readings` topic stores of a consumed batch: the reading batches of registered devices,
and every other record with the reason it is dead-lettered. The PostgreSQL and ClickHouse writers both take
their input from here, so the two sinks hold the same readings and refuse the same records for the same reasons."""
from __future__ import annotations

from collections.abc import Sequence

from confluent_kafka import Message

from actors.known_devices import KnownDevices
from meterray.domain import ReadingBatch
from storage.kafka import codec

FAILURE_ON_READINGS = "a failure record reached the readings topic (failures belong in readings.raw)"


async def storable(messages: Sequence[Message], known: KnownDevices
                   ) -> tuple[list[ReadingBatch], list[tuple[Message, str]]]:
    """(the batches to store, the refused records with their reasons)."""
    decoded: list[tuple[Message, ReadingBatch]] = []
    refused: list[tuple[Message, str]] = []
    for m in messages:
        try:
            batch = codec.decode(m.value())
        except codec.CodecError as err:
            refused.append((m, str(err)))
            continue
        if isinstance(batch, ReadingBatch):
            decoded.append((m, batch))
        else:
            refused.append((m, FAILURE_ON_READINGS))
    unknown = await known.unknown({b.device_id for _, b in decoded})
    if not unknown:
        return [b for _, b in decoded], refused
    refused += [(m, f"unknown device {b.device_id!r}: not registered in devices.devices")
                for m, b in decoded if b.device_id in unknown]
    return [b for _, b in decoded if b.device_id not in unknown], refused
