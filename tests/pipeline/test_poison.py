"""Issue 5, item 2: poison input never stops a stream.

While the simulated meters stream, crafted records go straight into `readings.raw` (the device
processor's input) and `readings` (the PostgreSQL writer's input). Each must land in
`readings.dlq` exactly once with its reason; every poll slot of every meter over the window must
still be in PostgreSQL exactly once; no stage may restart.
"""
from __future__ import annotations

import asyncio
import time
import uuid
import zlib
from collections import Counter, defaultdict

import orjson
import ray

from meterray.app.demo import manifest_connections
from meterray.domain import Quality
from meterray.settings import Settings
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer
from tests.conftest import POLL_INTERVAL_S, wait_for
from tests.pipeline.helpers import read_topic, sql

STAGES = ("device-processor", "pg-writer", "ch-writer")
# The stages reading each topic: both writers read `readings`, and each dead-letters what it cannot store.
READERS = {topics.READINGS_RAW: ("device-processor",), topics.READINGS: ("pg-writer", "ch-writer")}
_UNKNOWN_BIT = 1 << max(f.value for f in Quality).bit_length()  # the first bit no Quality flag uses


def _crafted(device_id: str, now_ms: int, tag: str) -> list[tuple[bytes, str]]:
    """(raw record, the reason its dead letter must give). Each raw is unique (it carries `tag`)."""
    def doc(**fields: object) -> bytes:
        d: dict[str, object] = {"device_id": device_id, "ts": now_ms, "source": f"poison/{tag}",
                                "values": [["1-0:1.8.0", 1.0, "kWh", 0]]}
        d.update(fields)
        return orjson.dumps(d)

    good = doc()
    return [
        (good[: len(good) // 2], "not valid JSON"),  # truncated
        (doc(ts=str(now_ms)), "ts must be integer epoch milliseconds, got string"),
        (doc(values=[["1-0:1.8.0", "12.5", "kWh", 0]]), "value of 1-0:1.8.0 must be a number, got string"),
        (doc(values={"1-0:1.8.0": 1.0}), "values must be a list"),
        (doc(ts=10**16), "outside the accepted window"),  # huge
        (doc(ts=-(10**12)), "outside the accepted window"),  # negative
        (good.replace(b"1.0", b"NaN"), "non-finite number (NaN or Infinity)"),
        (good.replace(b"1.0", b"Infinity"), "non-finite number (NaN or Infinity)"),
        (good.replace(b"1.0", b"1e999"), "number is infinity"),
        (doc(device_id=device_id + "\x00"), "device_id contains the control character"),
        (doc(source=f"poison/{tag}\x00"), "source contains the control character"),
        (doc(values=[["1-0:1.8.0", 1.0, "kWh\x00", 0]]), "unit 'kWh\\x00' does not match"),
        (doc(values=[["1-0:1.8.0", "9" * 1_000_000, "kWh", 0]]), "exceeds the 65536-byte limit"),  # 1 MB value
        (doc(device_id=f"ghost-{tag}"), f"unknown device 'ghost-{tag}': not registered in devices.devices"),
        (doc(values=[["1-0:1.8.0", 1.0, None, 0]]), "unit of 1-0:1.8.0 must be a string, got null"),
        (doc(values=[["1-0:99.99.0", 1.0, "kWh", 0]]), "unknown OBIS quantity '1-0:99.99.0'"),
        (doc(values=[["1-0:1.8.0", 1.0, "kWh", _UNKNOWN_BIT]]), f"unknown quality flag bits {_UNKNOWN_BIT:#x}"),
        (orjson.dumps([tag]), "message must be a JSON object, got array"),
    ]


def _dead_letters(s: Settings) -> list[dict]:
    return [codec.decode_dead_letter(v) for _, v in read_topic(s.kafka_bootstrap, s.topic(topics.READINGS_DLQ),
                                                               timeout_s=10)]


def _stages(supervisor) -> dict[str, dict]:
    children = ray.get(supervisor.status.remote())["children"]
    return {c["role"]: c for c in children.values() if c["role"] in STAGES}


def _slots(connection_id: str, start_ms: int, end_ms: int, interval_ms: int) -> list[int]:
    """The poll slots of a connection in [start, end): phase + k·interval (actors/modbus_shard.py)."""
    phase = zlib.crc32(connection_id.encode()) % interval_ms
    first = phase + -(-(start_ms - phase) // interval_ms) * interval_ms
    return list(range(first, end_ms, interval_ms))


def test_poison_records_are_dead_lettered_once_and_the_stream_goes_on(runtime: dict) -> None:
    s: Settings = runtime["settings"]
    supervisor, manifest = runtime["supervisor"], runtime["manifest"]
    interval_ms = int(POLL_INTERVAL_S * 1000)
    ids = [m["device_id"] for m in manifest]
    wait_for(lambda: sql(s.pg_dsn, "SELECT count(DISTINCT device_id) AS n FROM monitoring.readings_current"
                                   " WHERE device_id = ANY($1::text[])", ids)[0]["n"] == len(ids),
             90, "every meter to report")
    before = _stages(supervisor)  # an earlier test may have killed a stage on purpose (test_health)

    start_ms = int(time.time() * 1000) + 1000
    time.sleep(3 * POLL_INTERVAL_S)  # poison arrives in the middle of the window, not at its edge
    tag = uuid.uuid4().hex[:8]
    crafted: dict[str, list[tuple[bytes, str]]] = {}
    for topic in (topics.READINGS_RAW, topics.READINGS):
        crafted[topic] = _crafted(ids[0], int(time.time() * 1000), f"{tag}-{topic}")
        crafted[topic].append((b"", "empty message"))  # a record with an empty value
    crafted[topics.READINGS].append((codec.encode(codec.decode(orjson.dumps(
        {"device_id": ids[0], "ts": int(time.time() * 1000), "source": f"poison/{tag}",
         "failure": {"kind": "timeout", "detail": "poison"}}))), "a failure record reached the readings topic"))

    async def produce() -> None:
        # message.max.bytes: the 1 MB record must reach Kafka (lz4 makes it small on the wire).
        async with AsyncProducer(s.kafka_bootstrap, **{"message.max.bytes": 4_000_000}) as p:
            await p.send_many((s.topic(topic), topics.partition_for(ids[0], s.kafka_partitions), ids[0].encode(), raw)
                              for topic, records in crafted.items() for raw, _ in records)

    asyncio.run(produce())
    time.sleep(5 * POLL_INTERVAL_S)
    end_ms = int(time.time() * 1000)

    # 1. Every crafted record is in the DLQ exactly once per stage that read it, with its reason.
    expected = {(s.topic(topic), raw[:codec.MAX_DEAD_LETTER_RAW_BYTES]): reason
                for topic, records in crafted.items() for raw, reason in records}
    expected_letters = {(s.topic(topic), raw[:codec.MAX_DEAD_LETTER_RAW_BYTES], stage)
                        for topic, records in crafted.items() for raw, _ in records for stage in READERS[topic]}

    def all_dead_lettered() -> list[dict] | None:
        mine = [d for d in _dead_letters(s) if (d.get("topic"), d["raw"]) in expected]
        return mine if len(mine) >= len(expected_letters) else None

    mine = wait_for(all_dead_lettered, 60, f"{len(expected_letters)} dead letters")
    counts = Counter((d["topic"], d["raw"], d["stage"]) for d in mine)
    assert set(counts) == expected_letters and set(counts.values()) == {1}, "each record dead-lettered once a stage"
    for d in mine:
        want = expected[(d["topic"], d["raw"])]
        assert want in d["reason"], (want, d["reason"])
    big = [d for d in mine if d.get("raw_truncated")]
    assert len(big) == 3 and all(d["raw_bytes"] > 1_000_000 for d in big)
    # No record of the polled meters was dead-lettered (other tests dead-letter records of their own devices).
    others = [d for d in _dead_letters(s) if d.get("stage") in STAGES and (d.get("topic"), d["raw"]) not in expected
              and any(i.encode() in d["raw"] for i in ids)]
    assert others == [], f"stages dead-lettered records nobody crafted: {[d['reason'] for d in others][:5]}"

    # 2. Every poll slot of every meter in the window is in PostgreSQL, each with all its quantities.
    conn_of = {d.device_id: c.connection_id for c in manifest_connections(manifest, POLL_INTERVAL_S, 0.5)
               for d in c.devices}

    def archive() -> dict[str, dict[int, int]] | None:
        rows = sql(s.pg_dsn, "SELECT device_id, (extract(epoch FROM ts) * 1000)::bigint AS ms, count(*) AS n"
                             " FROM monitoring.readings WHERE device_id = ANY($1::text[])"
                             " AND ts >= to_timestamp($2 / 1000.0) AND ts < to_timestamp($3 / 1000.0)"
                             " GROUP BY 1, 2", ids, start_ms, end_ms)
        got: dict[str, dict[int, int]] = defaultdict(dict)
        for r in rows:
            got[r["device_id"]][r["ms"]] = r["n"]
        complete = all(set(got[i]) >= set(_slots(conn_of[i], start_ms, end_ms, interval_ms)) for i in ids)
        return got if complete else None

    got = wait_for(archive, 60, "every poll slot of the window in PostgreSQL")
    for device_id in ids:
        slots = _slots(conn_of[device_id], start_ms, end_ms, interval_ms)
        assert sorted(got[device_id]) == slots, f"{device_id}: slots off the grid or missing"
        assert len(set(got[device_id].values())) == 1, f"{device_id}: a slot lacks quantities {got[device_id]}"
    assert not sql(s.pg_dsn, "SELECT 1 FROM monitoring.readings WHERE source LIKE 'poison/%'")

    # 3. The stages never stopped: same processes, no restarts, and they dead-lettered what they say.
    after = _stages(supervisor)
    for role in STAGES:
        assert after[role]["restarts"] == before[role]["restarts"], after[role]
        assert after[role]["last_ping"]["pid"] == before[role]["last_ping"]["pid"], f"{role} was replaced"
        assert after[role]["last_ping"]["dead_letters"] >= len(crafted[topics.READINGS]) - 1
