"""The raw baseline of `meterray bench partners`: a plain aiohttp fetch loop producing straight to Kafka.

No Ray, no mapping, no validation, no cursor, no PostgreSQL: per path one task walks the cursor pages
of the window, parses each JSON page with orjson and produces every record as it came, one Kafka
message per record, keyed by meter. It is what fetching the same pages costs without meterray.
Prints one JSON object with its own figures.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp
import orjson
import psutil
from confluent_kafka import Producer


async def walk(session: aiohttp.ClientSession, url: str, params: dict[str, str], producer: Producer, topic: str,
               stats: dict[str, int]) -> None:
    cursor = None
    while True:
        q = {**params, **({"cursor": cursor} if cursor else {})}
        async with session.get(url, params=q, headers={"X-Api-Key": "sim-key"}) as r:
            body = await r.read()
        doc: Any = orjson.loads(body)
        for rec in doc["data"]:
            while True:
                try:
                    producer.produce(topic, orjson.dumps(rec), rec["meter"].encode())
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.poll(0)
        stats["pages"] += 1
        stats["records"] += len(doc["data"])
        cursor = doc.get("next_cursor")
        if not cursor:
            return


async def run(a: argparse.Namespace) -> dict[str, Any]:
    producer = Producer({"bootstrap.servers": a.bootstrap, "enable.idempotence": True, "acks": "all",
                         "compression.type": "lz4", "linger.ms": 5, "batch.num.messages": 10000})
    stats = {"pages": 0, "records": 0}
    me = psutil.Process()
    cpu0 = me.cpu_times()
    started = time.perf_counter()
    now_ms = int(time.time() * 1000)
    groups = json.loads(a.groups)
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(walk(session, f"{a.base}/api/json/cursor/readings",
                                    {"since": str(now_ms - int(a.window * 1000)), "until": str(now_ms),
                                     "limit": str(a.page_size), "meters": ",".join(g)}, producer, a.topic, stats)
                               for g in groups))
    left = await asyncio.to_thread(producer.flush, 60)
    seconds = time.perf_counter() - started
    cpu1 = me.cpu_times()
    cpu_s = cpu1.user + cpu1.system - cpu0.user - cpu0.system
    return {**stats, "seconds": round(seconds, 2), "cpu_s": round(cpu_s, 2), "undelivered": left,
            "rss_mb": round(me.memory_info().rss / 2**20, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True)
    p.add_argument("--groups", required=True, help="JSON list of meter lists, one fetch task each")
    p.add_argument("--window", type=float, required=True)
    p.add_argument("--page-size", type=int, required=True)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    print(json.dumps(asyncio.run(run(p.parse_args()))))


if __name__ == "__main__":
    main()
