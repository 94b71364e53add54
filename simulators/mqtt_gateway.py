"""Simulated MQTT meters and gateways: many meters publishing readings at QoS 1 at a set rate.

    python -m simulators.mqtt_gateway --meters 100 --rate 200 --seconds 30 --format own
    python -m simulators.mqtt_gateway --meters 100 --rate 20 --format gateway --per-message 10 \
        --duplicates 0.05 --late 0.05 --malformed 0.02

Formats (protocols/mqtt/codecs.py): `own` publishes one message per reading on
`<prefix>/meterray/v1/<device_id>/readings`; `gateway` publishes batches of `--per-message`
readings of several meters on `<prefix>/gateways/<gateway>/batch`. Every reading carries three
values: active energy import (1-0:1.8.0, kWh, growing), active power (1-0:16.7.0, W) and voltage
L1 (1-0:32.7.0, V), chosen to be exact binary fractions so a checksum (their sum) is exact.

Faults, each a fraction of the messages: `--duplicates` sends a message again (same readings),
`--late` sends a reading stamped minutes in the past, `--malformed` sends a message meterray must
refuse (broken JSON, an unknown OBIS code, a non-number), which carries no reading.

The rate is messages per second in total. A message counts as published once the broker
acknowledged it (PUBACK). At the end one JSON line on stdout says what was published: messages,
readings (distinct device/timestamp pairs), data points and their checksum, by kind; with
`--ready-file`, a line is written there when the client is connected (the bench waits for it).
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ENERGY, POWER, VOLTAGE = "1-0:1.8.0", "1-0:16.7.0", "1-0:32.7.0"
LATE_BY_MS = 10 * 60 * 1000
MALFORMED = (b'{"ts": 17', b'{"ts": 1764146400000, "values": {"9.9.9": 1}}',
             b'{"ts": 1764146400000, "values": {"1-0:1.8.0": "lots"}}', b"\x00\xff")


@dataclass(slots=True)
class Meter:
    device_id: str
    k: int = 0  # readings so far
    last_ts: int = 0
    last_late_ts: int = 0

    def reading(self, now_ms: int, late: bool) -> tuple[int, dict[str, float]]:
        self.k += 1
        if late:
            ts = self.last_late_ts = max(now_ms - LATE_BY_MS, self.last_late_ts + 1)
        else:
            ts = self.last_ts = max(now_ms, self.last_ts + 1)
        # Multiples of 1/4: exact in binary floating point, so the checksum is exact.
        return ts, {ENERGY: 1000.0 + self.k * 0.25, POWER: float(200 + self.k % 50),
                    VOLTAGE: 230.0 + (self.k % 8) * 0.5}


@dataclass(slots=True)
class Published:
    messages: int = 0
    readings: int = 0
    datapoints: int = 0
    checksum: float = 0.0
    duplicates: int = 0
    late: int = 0
    malformed: int = 0
    first_ms: int = 0
    last_ms: int = 0


Sent = tuple[str, int, int, float]  # kind, readings, data points, checksum of one message


class Publisher:
    """A QoS 1 publisher that counts what the broker acknowledged (PUBACK), by kind."""

    def __init__(self, host: str, port: int, client_id: str, inflight: int = 100) -> None:
        self.stats = Published()
        self._lock = threading.Lock()
        self._pending: dict[int, Sent] = {}  # mid → what it carried, until its PUBACK
        self._early: set[int] = set()  # PUBACKs that arrived before publish() returned the mid
        self._connected = threading.Event()
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.max_inflight_messages_set(inflight)
        c.max_queued_messages_set(inflight * 10)  # publish() is refused beyond this instead of queueing unbounded
        c.on_publish = self._on_publish
        c.on_connect = lambda *_: self._connected.set()
        c.connect(host, port, keepalive=30)
        c.loop_start()
        self._client = c
        if not self._connected.wait(30):
            raise RuntimeError(f"could not connect to the MQTT broker at {host}:{port}")

    @property
    def unacknowledged(self) -> int:
        with self._lock:
            return len(self._pending)

    def publish(self, topic: str, payload: bytes, sent: Sent) -> None:
        while True:
            info = self._client.publish(topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_QUEUE_SIZE:
                break
            time.sleep(0.002)  # the client's queue is full: let acknowledgements drain it
        with self._lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                self._count(sent)
            else:
                self._pending[info.mid] = sent

    def _on_publish(self, _c: Any, _u: Any, mid: int, _reason: Any, _props: Any) -> None:
        with self._lock:
            sent = self._pending.pop(mid, None)
            if sent is None:
                self._early.add(mid)
            else:
                self._count(sent)

    def _count(self, sent: Sent) -> None:
        kind, readings, datapoints, checksum = sent
        s = self.stats
        s.messages += 1
        now = int(time.time() * 1000)
        s.first_ms = s.first_ms or now
        s.last_ms = now
        if kind == "malformed":
            s.malformed += 1
        elif kind == "duplicate":
            s.duplicates += 1
        else:
            s.readings += readings
            s.datapoints += datapoints
            s.checksum += checksum
            s.late += kind == "late"

    def wait_all_acked(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.unacknowledged:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    rnd = random.Random(args.seed)
    meters = [Meter(f"{args.device_prefix}{i:06d}") for i in range(args.first, args.first + args.meters)]
    prefix = args.prefix.rstrip("/") + "/" if args.prefix else ""
    pub = Publisher(args.host, args.port, args.client_id or f"meterray-sim-{rnd.getrandbits(32):08x}", args.inflight)
    if args.ready_file:
        Path(args.ready_file).write_text("ready\n")
    start = time.monotonic()
    sent = 0
    cursor = 0
    last_payload: tuple[str, bytes] | None = None
    total = int(args.rate * args.seconds) if args.count is None else args.count
    while sent < total:
        due = start + sent / args.rate
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        now_ms = int(time.time() * 1000)
        r = rnd.random()
        if last_payload is not None and r < args.duplicates:
            topic, payload = last_payload
            pub.publish(topic, payload, ("duplicate", 0, 0, 0.0))
        elif r < args.duplicates + args.malformed:
            m = meters[cursor % len(meters)]
            topic = f"{prefix}meterray/v1/{m.device_id}/readings" if args.format == "own" else \
                f"{prefix}gateways/{args.gateway}/batch"
            pub.publish(topic, rnd.choice(MALFORMED), ("malformed", 0, 0, 0.0))
        else:
            late = r < args.duplicates + args.malformed + args.late
            if args.format == "own":
                m = meters[cursor % len(meters)]
                cursor += 1
                ts, values = m.reading(now_ms, late)
                topic = f"{prefix}meterray/v1/{m.device_id}/readings"
                payload = orjson.dumps({"ts": ts, "values": values})
                readings, datapoints, checksum = 1, len(values), sum(values.values())
            else:
                base = now_ms - (LATE_BY_MS if late else 0)
                group: dict[str, list[list[Any]]] = {}
                readings = datapoints = 0
                checksum = 0.0
                for _ in range(args.per_message):
                    m = meters[cursor % len(meters)]
                    cursor += 1
                    ts, values = m.reading(now_ms, late)
                    group.setdefault(m.device_id, []).append([ts - base, values])
                    readings, datapoints = readings + 1, datapoints + len(values)
                    checksum += sum(values.values())
                topic = f"{prefix}gateways/{args.gateway}/batch"
                payload = orjson.dumps({"ts": base, "meters": group})
            pub.publish(topic, payload, ("late" if late else "reading", readings, datapoints, checksum))
            last_payload = (topic, payload)
        sent += 1
    all_acked = pub.wait_all_acked(args.ack_timeout)
    elapsed = time.monotonic() - start
    pub.close()
    s = pub.stats
    return {"format": args.format, "meters": args.meters, "offered": sent, "published": s.messages,
            "unacknowledged": pub.unacknowledged, "all_acknowledged": all_acked, "readings": s.readings,
            "datapoints": s.datapoints, "checksum": s.checksum, "duplicates": s.duplicates, "late": s.late,
            "malformed": s.malformed, "first_ms": s.first_ms, "last_ms": s.last_ms, "seconds": round(elapsed, 3),
            "messages_per_s": round(s.messages / elapsed, 1) if elapsed else None,
            "cpu_s": round(_cpu_s(), 2),
            "device_ids": [m.device_id for m in meters] if args.list_devices else None}


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simulators.mqtt_gateway", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--client-id", default="")
    p.add_argument("--format", choices=["own", "gateway"], default="own")
    p.add_argument("--prefix", default="", help="topic prefix, e.g. a site or a test run (default: none)")
    p.add_argument("--gateway", default="gw-1", help="gateway id in the batch topic")
    p.add_argument("--device-prefix", default="sim-mqtt-")
    p.add_argument("--meters", type=int, default=10)
    p.add_argument("--first", type=int, default=0, help="number of the first meter (several processes split a fleet)")
    p.add_argument("--rate", type=float, default=10.0, help="messages per second in total")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--count", type=int, default=None, help="publish exactly this many messages (overrides --seconds)")
    p.add_argument("--per-message", type=int, default=10, help="gateway format: readings per message")
    p.add_argument("--duplicates", type=float, default=0.0)
    p.add_argument("--late", type=float, default=0.0)
    p.add_argument("--malformed", type=float, default=0.0)
    p.add_argument("--inflight", type=int, default=100, help="QoS 1 messages awaiting PUBACK at once")
    p.add_argument("--ack-timeout", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ready-file", default="")
    p.add_argument("--list-devices", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.rate <= 0 or args.meters <= 0:
        print("--rate and --meters must be positive", file=sys.stderr)
        return 2
    result = run(args)
    print(json.dumps(result), flush=True)
    return 0 if result["all_acknowledged"] else 1


if __name__ == "__main__":
    sys.exit(main())
