"""Every Prometheus metric meterray exports, defined in one place.

They are `ray.util.metrics` objects, exported by Ray's metrics agent (scraped from each node's
metrics port, names prefixed `ray_`); each actor process creates its own on first use. The Grafana
dashboard ops/grafana/meterray.json queries these series and no others (tests/ops checks it against
a running pipeline's endpoint).
"""
from __future__ import annotations

from functools import cache

from ray.util import metrics

LATENCY_BOUNDARIES_MS = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0]


@cache
def polls() -> metrics.Counter:
    return metrics.Counter("meterray_polls_total", "Device polls attempted, by protocol and outcome",
                           tag_keys=("protocol", "outcome"))


@cache
def poll_latency_ms() -> metrics.Histogram:
    return metrics.Histogram("meterray_poll_latency_ms", "Poll start to Kafka acknowledgement, milliseconds",
                             boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("protocol",))


@cache
def shard_buffer_dropped() -> metrics.Counter:
    return metrics.Counter("meterray_shard_buffer_dropped_total",
                           "Records a shard dropped because its outbox was full while Kafka did not take them "
                           "(METERRAY_SHARD_BUFFER_MB)", tag_keys=("protocol",))


@cache
def shard_buffered_records() -> metrics.Gauge:
    return metrics.Gauge("meterray_shard_buffered_records", "Records a shard holds that Kafka has not acknowledged yet",
                         tag_keys=("shard",))


@cache
def ingested_readings() -> metrics.Counter:
    """The ingest rate per protocol: readings a source (shard, partner actor) took from its devices."""
    return metrics.Counter("meterray_ingested_readings_total", "Readings taken from devices, by protocol",
                           tag_keys=("protocol",))


@cache
def consumer_lag() -> metrics.Gauge:
    return metrics.Gauge("meterray_consumer_lag_records",
                         "Records of a partition a consumer group has not committed yet (high watermark - committed)",
                         tag_keys=("group", "topic", "partition"))


@cache
def devices() -> metrics.Gauge:
    # `namespace`: the runtime's Ray namespace, so two runtimes on one cluster do not overwrite each other.
    return metrics.Gauge("meterray_devices", "Registered devices per health status (unknown, online, degraded, "
                                             "offline)", tag_keys=("namespace", "status"))


@cache
def sink_write_latency_ms() -> metrics.Histogram:
    return metrics.Histogram("meterray_sink_write_latency_ms", "One batch written to a sink (transaction included), "
                             "milliseconds", boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("sink",))


@cache
def readings() -> metrics.Counter:
    return metrics.Counter("meterray_readings_total", "Readings handled, by pipeline stage", tag_keys=("stage",))


@cache
def dead_letters() -> metrics.Counter:
    return metrics.Counter("meterray_dead_letters_total", "Records sent to the dead-letter topic, by stage",
                           tag_keys=("stage",))


@cache
def device_events() -> metrics.Counter:
    return metrics.Counter("meterray_device_events_total", "Device events published, by kind and status",
                           tag_keys=("kind", "status"))


@cache
def reading_quality() -> metrics.Counter:
    return metrics.Counter("meterray_reading_quality_total",
                           "Readings validated by the device processor, by quality flag (a reading with two flags "
                           "counts under both; OK: no flag)", tag_keys=("flag",))


@cache
def devices_by_status() -> metrics.Gauge:
    return metrics.Gauge("meterray_devices", "Devices a device processor owns, by health status",
                         tag_keys=("status", "processor"))


@cache
def processing_lag_s() -> metrics.Gauge:
    return metrics.Gauge("meterray_processing_lag_seconds",
                         "Device processor: receive time (Kafka timestamp) of readings.raw records to their "
                         "processing, by input partition; 0 while the partition is caught up",
                         tag_keys=("partition",))


@cache
def consumer_lag_messages() -> metrics.Gauge:
    return metrics.Gauge("meterray_consumer_lag_messages", "Device processor: records of an input partition not "
                         "processed yet", tag_keys=("partition",))


@cache
def notifications() -> metrics.Counter:
    return metrics.Counter("meterray_notifications_total",
                           "Device events the notifier decided on, by kind and outcome (notified, suppressed, too_old)",
                           tag_keys=("kind", "outcome"))


@cache
def emails() -> metrics.Counter:
    return metrics.Counter("meterray_emails_total",
                           "E-mail send attempts of the outbox, by outcome (sent, logged, rejected, failed, retry)",
                           tag_keys=("outcome",))


@cache
def actor_restarts() -> metrics.Counter:
    return metrics.Counter("meterray_actor_restarts_total", "Actors the supervisor had to recreate",
                           tag_keys=("role",))


def count(counter: metrics.Counter, n: int, **tags: str) -> None:
    """Add `n` to a counter; Ray refuses increments of zero, and an empty batch is normal."""
    if n > 0:
        counter.inc(n, tags=tags)
