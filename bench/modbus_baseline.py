"""The raw baseline of `meterray bench modbus`: a plain pymodbus asyncio loop producing straight to Kafka.

No Ray, no validation, no PostgreSQL: per endpoint one task that, on each tick, reads every meter's
register blocks with pymodbus and produces one message of raw words per meter. It is what the
same polling costs without meterray. Prints one JSON object with its own figures.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections import defaultdict
from typing import Any

import orjson
import psutil
from confluent_kafka import Producer
from pymodbus.client import AsyncModbusTcpClient

from protocols.modbus.planner import plan_blocks
from protocols.modbus.profiles import PROFILES


async def poll_endpoint(host: str, port: int, meters: list[dict], interval_s: float, phase_s: float,
                        stop_at: float, producer: Producer, topic: str, stats: dict) -> None:
    client = AsyncModbusTcpClient(host, port=port, timeout=1.0, retries=0)
    await client.connect()
    plans = [(m["device_id"], m["unit_id"], plan_blocks(PROFILES[m["profile"]]), len(PROFILES[m["profile"]].fields))
             for m in meters]
    tick = time.time() + phase_s  # endpoints spread over the interval, as meterray does
    while tick < stop_at:
        await asyncio.sleep(max(0.0, tick - time.time()))
        started = time.perf_counter()
        pending = [len(plans)]
        for device_id, unit, blocks, n_values in plans:
            words: list[int] = []
            try:
                for b in blocks:
                    if b.function_code == 4:
                        rr = await client.read_input_registers(b.start, count=b.count, device_id=unit)
                    else:
                        rr = await client.read_holding_registers(b.start, count=b.count, device_id=unit)
                    if rr.isError():
                        raise RuntimeError(str(rr))
                    words.extend(rr.registers)
            except Exception:
                stats["failed"] += 1
                if not client.connected:
                    await client.connect()
                pending[0] -= 1
                continue

            def delivered(err, _msg, n=n_values, pending=pending, started=started) -> None:
                pending[0] -= 1
                if err is not None:
                    stats["delivery_errors"] += 1
                    stats["last_error"] = str(err)
                else:
                    stats["polls"] += 1
                    stats["readings"] += n
                    if pending[0] == 0:
                        latency = (time.perf_counter() - started) * 1000
                        stats["latencies"].extend([latency] * len(plans))
            producer.produce(topic, orjson.dumps({"device_id": device_id, "ts": int(tick * 1000), "words": words}),
                             device_id.encode(), on_delivery=delivered)
        tick += interval_s
        if tick < time.time():
            tick = time.time()
    client.close()


async def pump(producer: Producer, stop_at: float) -> None:
    while time.time() < stop_at + 2:
        producer.poll(0)
        await asyncio.sleep(0.005)


async def announce_end(stop_at: float, announce: bool) -> None:
    if announce:
        await asyncio.sleep(max(0.0, stop_at - time.time()))
        print(json.dumps({"event": "measured"}), flush=True)


async def run(args: argparse.Namespace) -> dict:
    manifest = json.loads(open(args.manifest).read())
    endpoints: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for m in manifest:
        endpoints[(m["host"], m["port"])].append(m)
    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True, "acks": "all",
                         "compression.type": "lz4", "linger.ms": 5})
    # Warm-up: the same loop for a few seconds, then the measured window, announced on stdout so the
    # driver can measure the simulator's CPU over the same window.
    for phase, seconds in (("warmup", args.warmup), ("measure", args.seconds)):
        if phase == "measure":
            print(json.dumps({"event": "measure"}), flush=True)
        stats: dict[str, Any] = {"polls": 0, "failed": 0, "readings": 0, "latencies": [],
                                 "delivery_errors": 0, "last_error": None}
        proc = psutil.Process()
        cpu0 = sum(proc.cpu_times()[:2])
        stop_at = time.time() + seconds
        await asyncio.gather(pump(producer, stop_at), announce_end(stop_at, phase == "measure"), *(
            poll_endpoint(h, p, ms, args.interval, i * args.interval / len(endpoints), stop_at, producer,
                          args.topic, stats)
            for i, ((h, p), ms) in enumerate(endpoints.items())))
        producer.flush(10)
        cpu = sum(proc.cpu_times()[:2]) - cpu0
    lat = sorted(stats["latencies"])
    pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None  # noqa: E731
    return {
        "seconds": args.seconds,
        "polls_ok": stats["polls"], "polls_failed": stats["failed"], "readings": stats["readings"],
        "delivery_errors": stats["delivery_errors"], "last_error": stats["last_error"],
        "p50_ms": pick(0.5), "p99_ms": pick(0.99), "cpu_s": round(cpu, 3),
        "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    # 2,000 TCP connections need more than the usual 1,024 open files: soft limit → hard limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # an unlimited hard limit: keep the soft one
            pass
    p = argparse.ArgumentParser()
    p.add_argument("--manifest", required=True)
    p.add_argument("--interval", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    print(json.dumps(asyncio.run(run(p.parse_args()))))


if __name__ == "__main__":
    main()
