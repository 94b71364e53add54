"""Kafka topics of the pipeline and the explicit device → partition mapping."""
from __future__ import annotations

import zlib

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from meterray.settings import Settings

READINGS_RAW = "readings.raw"  # source shards → device processors
READINGS = "readings"  # validated readings with quality flags → sink writers
DEVICE_EVENTS = "device-events"  # device state transitions → notifier
READINGS_DLQ = "readings.dlq"  # input that cannot be decoded, with reason and raw bytes
# Gaps in a device's half-hours that its source can still resend (storage.kafka.backfill): partner
# and meter-archive sources act on them; keyed and partitioned by device like readings.
BACKFILL_REQUESTS = "backfill-requests"

AUDIT = "audit"  # process events: actors started, stopped, restarted, reconfigurations (actors/audit.py)
# Device metadata, one record per device keyed by its id (storage/kafka/device_topic.py): compacted, so it
# holds every device's latest record forever and a new consumer copies the whole catalogue from it.
DEVICES = "devices"

ALL_TOPICS = (READINGS_RAW, READINGS, DEVICE_EVENTS, READINGS_DLQ, BACKFILL_REQUESTS, AUDIT, DEVICES)
# Topic configuration other than the defaults (k8s/base/kafka-topics.yaml says the same).
TOPIC_CONFIG = {DEVICES: {"cleanup.policy": "compact"}}


def partition_for(device_id: str, partitions: int) -> int:
    """Stable across processes and restarts (Python's hash() is salted per process)."""
    return zlib.crc32(device_id.encode()) % partitions


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create the pipeline's topics if missing; returns the names created. Idempotent."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    existing = admin.list_topics(timeout=timeout_s).topics
    wanted = [settings.topic(t) for t in ALL_TOPICS]
    missing = [t for t in wanted if t not in existing]
    if not missing:
        _check_partitions(settings, {t: len(existing[t].partitions) for t in wanted})
        return []
    futures = admin.create_topics(
        [NewTopic(settings.topic(t), num_partitions=settings.kafka_partitions, replication_factor=1,
                  config=TOPIC_CONFIG.get(t, {}))
         for t in ALL_TOPICS if settings.topic(t) in missing],
        operation_timeout=timeout_s,
    )
    for fut in futures.values():
        try:
            fut.result(timeout=timeout_s)
        except KafkaException as err:
            if err.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
    return missing


def _check_partitions(settings: Settings, counts: dict[str, int]) -> None:
    # Device ownership is computed from the partition count, so every stage must agree on it.
    wrong = {t: n for t, n in counts.items() if n != settings.kafka_partitions}
    if wrong:
        raise RuntimeError(
            f"topics {wrong} do not have METERRAY_KAFKA_PARTITIONS={settings.kafka_partitions} partitions; "
            "set it to the topics' partition count or recreate the topics"
        )
