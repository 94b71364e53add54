"""The raw baseline of `meterray bench mqtt`: a plain paho subscriber producing straight to Kafka.

No Ray, no decoding beyond the timestamp, no device registry, no PostgreSQL: one paho client
(MQTT 5, QoS 1, its own clean session, paho's automatic acknowledgement after the callback) that
produces each message's payload as it is to one Kafka topic with confluent-kafka (the same producer
settings as meterray's: idempotent, acks=all, lz4). It is what moving the messages costs without
meterray. Runs until SIGTERM, then waits for Kafka's last delivery reports and prints one JSON
object: messages received and delivered, delivery errors, and publish → Kafka-confirmed delays.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from confluent_kafka import Producer
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--topic-filter", required=True)
    p.add_argument("--client-id", required=True)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--ready-file", required=True)
    p.add_argument("--status-file", required=True, help="delivered count, rewritten twice a second")
    args = p.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True, "acks": "all",
                         "compression.type": "lz4", "linger.ms": 5, "batch.num.messages": 10000})
    stats: dict[str, Any] = {"received": 0, "delivered": 0, "delivery_errors": 0, "last_error": "",
                             "first_delivered_ms": 0, "last_delivered_ms": 0}
    delays: list[float] = []
    lock = threading.Lock()

    def delivered(err: Any, msg: Any) -> None:  # producer.poll() below, on the paho thread
        now = time.time() * 1000
        with lock:  # reports are served by whichever thread polls: the paho thread or the main one
            if err is not None:
                stats["delivery_errors"] += 1
                stats["last_error"] = str(err)
                return
            stats["delivered"] += 1
            stats["first_delivered_ms"] = stats["first_delivered_ms"] or now
            stats["last_delivered_ms"] = now
            delays.append(now - msg.timestamp()[1])  # the publish time was set as the record's timestamp

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        stats["received"] += 1
        ts = orjson.loads(msg.payload).get("ts", 0)  # the one field read: for the delay figure
        key = msg.topic.encode()
        while True:
            try:
                producer.produce(args.topic, bytes(msg.payload), key, partition=hash(key) % args.partitions,
                                 timestamp=int(ts), on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=args.client_id,
                         protocol=mqtt.MQTTv5)
    client.on_message = on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_connect = lambda c, *_: c.subscribe(args.topic_filter, options=SubscribeOptions(qos=1))
    client.connect(args.host, args.port, keepalive=30, clean_start=True)
    client.loop_start()
    if not subscribed.wait(30):
        print("baseline: could not subscribe", file=sys.stderr)
        return 1
    Path(args.ready_file).write_text("ready\n")
    status = Path(args.status_file)
    last_status = 0.0
    while not stop.wait(0.05):
        producer.poll(0)
        if time.monotonic() - last_status >= 0.5:
            last_status = time.monotonic()
            status.write_text(f"{stats['delivered']}\n")
    client.disconnect()
    client.loop_stop()
    left = producer.flush(30)
    delays.sort()
    pick = (lambda q: round(delays[min(len(delays) - 1, int(q * len(delays)))], 1)) if delays else (lambda q: None)
    print(json.dumps({**stats, "undelivered": left, "p50_ms": pick(0.5), "p99_ms": pick(0.99)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
