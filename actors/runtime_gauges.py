"""Gauges no single stage can report about itself, exported by the supervisor every EXPORT_INTERVAL_S:

- consumer lag per group and partition (`meterray_consumer_lag_records`): measured from outside the
  group (committed offsets against high watermarks), so it keeps growing while a stage is down;
- registered devices per health status (`meterray_devices`), from PostgreSQL.

A round that fails (Kafka or PostgreSQL away) is logged and the gauges keep their last values; the
next round tries again.
"""
from __future__ import annotations

import asyncio
import logging

import asyncpg

from actors import ch_writer, device_processor, metrics, notifier, pg_writer
from meterray.domain import DeviceStatus
from meterray.settings import Settings
from storage.kafka import topics
from storage.kafka.lag import PartitionLags, partition_lags
from storage.postgres.devices import count_by_status

log = logging.getLogger(__name__)

EXPORT_INTERVAL_S = 10.0  # Ray's metrics agent exports every 10 s: refreshing faster shows nothing more
# The consumer groups of the pipeline and what they read (unprefixed: Settings.topic adds the prefix).
CONSUMER_GROUPS = ((device_processor.GROUP_ID, topics.READINGS_RAW), (pg_writer.GROUP_ID, topics.READINGS),
                   (notifier.GROUP_ID, topics.DEVICE_EVENTS), (ch_writer.GROUP_ID, topics.READINGS))
# Every status a device can have: a status no device has any more is exported as 0, not its last count.
STATUSES = tuple(s.value for s in DeviceStatus)


async def export_once(settings: Settings) -> None:
    lags: list[PartitionLags] = await asyncio.gather(*(
        asyncio.to_thread(partition_lags, settings.kafka_bootstrap, settings.topic(group), settings.topic(topic))
        for group, topic in CONSUMER_GROUPS if group != ch_writer.GROUP_ID or settings.ch_writers))
    gauge = metrics.consumer_lag()
    for p in lags:
        if p.error is not None:
            log.warning("consumer lag of %s not measured: %s", p.group, p.error, extra={"group": p.group})
        for partition, lag in p.lags.items():
            gauge.set(lag, tags={"group": p.group, "topic": p.topic, "partition": str(partition)})
    conn = await asyncpg.connect(settings.pg_dsn, timeout=10)
    try:
        counts = await count_by_status(conn)
    finally:
        await conn.close()
    for status in sorted(set(STATUSES) | counts.keys()):
        metrics.devices().set(counts.get(status, 0), tags={"namespace": settings.ray_namespace, "status": status})


async def export_forever(settings: Settings, interval_s: float = EXPORT_INTERVAL_S) -> None:
    while True:
        try:
            await export_once(settings)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.warning("runtime gauges not exported: %s", err)
        await asyncio.sleep(interval_s)
