"""The ClickHouse writer on the real Kafka and an embedded ClickHouse (chDB) in this process, with device
metadata published from PostgreSQL by the real device catalog.

What a user of the analytics copy checks: every reading is there once, energy per hour, per local day and
per organisation is the register's rise, a redelivered batch (a writer that died between its insert and its
commit) doubles nothing in the raw copy or in any rollup, poison goes to the dead-letter topic, and while
ClickHouse refuses inserts no offset moves, and the writer catches up after."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone

import asyncpg
import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from actors.ch_writer import GROUP_ID, ChWriterCore
from actors.device_catalog import DeviceCatalogCore
from meterray.domain import ReadingBatch, Value
from meterray.settings import Settings
from storage.clickhouse import queries
from storage.clickhouse.store import ClickHouseStore
from storage.kafka import codec, device_topic, topics
from storage.kafka.producer import AsyncProducer
from tests.actors.conftest import register, until
from tests.pipeline.helpers import read_topic

A_PLUS = "1-0:1.8.0"
STEP_MS = 15 * 60 * 1000  # a reading every 15 minutes
KWH_PER_STEP = 0.25  # 1 kWh an hour: every energy below is a whole or quarter number, exact in binary


@pytest.fixture
def ch(own: Settings, local_clickhouse: str) -> Settings:
    """The test's topics and database, and a ClickHouse database of its own in this process's chDB."""
    return own.model_copy(update={"clickhouse_url": local_clickhouse,
                                  "clickhouse_database": f"t_{uuid.uuid4().hex[:10]}"})


@pytest.fixture
def store(ch: Settings) -> ClickHouseStore:
    s = ClickHouseStore(ch.clickhouse, ch.clickhouse_database)
    yield s
    s.close()


@asynccontextmanager
async def _writer(s: Settings, member: str, run: bool = True) -> AsyncIterator[ChWriterCore]:
    """A writer core; `run=False`: its loop is not started, the test drives its steps."""
    store = ClickHouseStore(s.clickhouse, s.clickhouse_database)
    pool = await asyncpg.create_pool(s.pg_dsn, min_size=1, max_size=1)
    producer = AsyncProducer(s.kafka_bootstrap)
    core = ChWriterCore(s, store, pool, producer, member)
    if run:
        await core.start()
    try:
        yield core
    finally:
        await core.stop()
        await producer.close()
        await pool.close()
        store.close()


def _midnight_days_ago(days: int) -> int:
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return int((today - timedelta(days=days)).timestamp() * 1000)


def _series(device_id: str, t0_ms: int, steps: int, first: int = 0) -> list[ReadingBatch]:
    """The A+ register of `device_id` every 15 minutes from t0 (from step `first` on) for `steps` + 1 readings,
    rising 0.25 kWh each."""
    return [ReadingBatch(device_id, t0_ms + k * STEP_MS, "test", (Value(A_PLUS, 1000 + k * KWH_PER_STEP, "kWh", 0),))
            for k in range(first, first + steps + 1)]


async def _send(s: Settings, batches: list[ReadingBatch]) -> None:
    async with AsyncProducer(s.kafka_bootstrap) as p:
        await p.send_many((s.topic(topics.READINGS), topics.partition_for(b.device_id, s.kafka_partitions),
                           b.device_id.encode(), codec.encode(b)) for b in batches)


def _lag(s: Settings) -> int:
    """Records of `readings` the writer's group has not committed yet, over every partition."""
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": s.topic(GROUP_ID)})
    try:
        tps = [TopicPartition(s.topic(topics.READINGS), p) for p in range(s.kafka_partitions)]
        committed = {tp.partition: tp.offset for tp in c.committed(tps, timeout=10)}
        ends = {p: c.get_watermark_offsets(TopicPartition(s.topic(topics.READINGS), p), timeout=10)[1]
                for p in committed}
        return sum(ends[p] - max(committed[p], 0) for p in committed)
    finally:
        c.close()


async def _stored_and_committed(s: Settings, store: ClickHouseStore, devices: list[str], n: int) -> None:
    async def done() -> bool:
        counts = await asyncio.to_thread(queries.raw_counts, store.client("read"), s.clickhouse_database, devices)
        return counts.readings >= n and _lag(s) == 0

    await until(done, 90, f"{n} readings in ClickHouse and every offset committed", every_s=0.3)


def _agg(store: ClickHouseStore, s: Settings, interval: str, start, end, **who) -> list[queries.Aggregate]:
    return queries.aggregates(store.client("read"), s.clickhouse_database, A_PLUS, interval, start, end, **who)


async def _own(dsn: str, org: uuid.UUID, tz: str | None, *device_ids: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE devices.devices SET organisation_id = $1, timezone = $2 WHERE id = ANY($3::text[])",
                           org, tz, list(device_ids))
    finally:
        await conn.close()


async def test_readings_and_devices_reach_clickhouse_with_hourly_daily_and_organisation_energy(
        ch: Settings, store: ClickHouseStore) -> None:
    s, tag = ch, uuid.uuid4().hex[:6]
    a, b, c = f"a-{tag}", f"b-{tag}", f"c-{tag}"
    org, other = uuid.uuid4(), uuid.uuid4()
    await register(s.pg_dsn, a, b, c)
    await _own(s.pg_dsn, org, "Asia/Yekaterinburg", a)  # UTC+5
    await _own(s.pg_dsn, org, None, b)  # the default zone, Europe/Moscow (UTC+3)
    await _own(s.pg_dsn, other, None, c)
    async with AsyncProducer(s.kafka_bootstrap) as p:
        catalog = DeviceCatalogCore(s, p)
        assert await catalog.sync() == (3, 0)
        assert await catalog.sync() == (0, 0), "nothing changed: nothing published again"
    table = device_topic.read_table(s.kafka_bootstrap, s.topic(topics.DEVICES))
    assert device_topic.decode(table[a]).organisation_id == org and device_topic.decode(table[a]).timezone

    t0 = _midnight_days_ago(4)  # 48 h of readings from midnight UTC four days ago
    steps = 48 * 4
    await _send(s, [x for d in (a, b, c) for x in _series(d, t0, steps)])
    async with _writer(s, f"w-{tag}") as w:
        await _stored_and_committed(s, store, [a, b, c], 3 * (steps + 1))
        assert (await w.ping())["dead_letters"] == 0
    counts = queries.raw_counts(store.client("read"), s.clickhouse_database, [a, b, c])
    assert counts.readings == 3 * (steps + 1)
    assert queries.raw_readings(store.client("read"), s.clickhouse_database, a, A_PLUS)[-1] == (
        t0 + steps * STEP_MS, 1000 + steps * KWH_PER_STEP)

    # Hours: each full hour after the first is exactly 1 kWh; 30 minutes are 0.5 kWh.
    start = datetime.fromtimestamp(t0 / 1000, timezone.utc) + timedelta(hours=1)
    hours = _agg(store, s, "1h", start, start + timedelta(hours=46), device_id=a)
    assert [h.energy for h in hours] == [1.0] * 46 and {h.readings for h in hours} == {4}
    halves = _agg(store, s, "30m", start, start + timedelta(hours=2), device_id=a)
    assert [h.energy for h in halves] == [0.5] * 4

    # Local days: t0 is 05:00 in Yekaterinburg and 03:00 in Moscow; the first day starts at its first
    # reading, each later day at the end of the day before. Every day's readings are counted in its own zone.
    d0 = datetime.fromtimestamp(t0 / 1000, timezone.utc).date()
    days_a = _agg(store, s, "1d", d0, d0 + timedelta(days=3), device_id=a)
    assert [(x.start, x.energy, x.readings) for x in days_a] == [
        (d0, 18.75, 76), (d0 + timedelta(days=1), 24.0, 96), (d0 + timedelta(days=2), 5.25, 21)]
    days_b = _agg(store, s, "1d", d0, d0 + timedelta(days=3), device_id=b)
    assert [(x.energy, x.readings) for x in days_b] == [(20.75, 84), (24.0, 96), (3.25, 13)]
    assert sum(x.energy or 0 for x in days_a) == sum(x.energy or 0 for x in days_b) == steps * KWH_PER_STEP

    # The organisation: its two devices summed per local day; the other organisation's device is not in it.
    days_org = _agg(store, s, "1d", d0, d0 + timedelta(days=3), organisation_id=org)
    assert [(x.energy, x.devices, x.readings) for x in days_org] == [(39.5, 2, 160), (48.0, 2, 192), (8.5, 2, 34)]
    assert [x.devices for x in _agg(store, s, "1d", d0, d0 + timedelta(days=3), organisation_id=other)] == [1] * 3
    assert _agg(store, s, "1d", d0, d0 + timedelta(days=3), organisation_id=uuid.uuid4()) == []
    month = _agg(store, s, "1mo", d0.replace(day=1), d0 + timedelta(days=40), device_id=a)
    assert sum(x.energy or 0 for x in month) == steps * KWH_PER_STEP and sum(x.readings for x in month) == steps + 1

    # A device moves to another organisation: published, copied, and the aggregates follow it.
    await _own(s.pg_dsn, other, None, b)
    async with AsyncProducer(s.kafka_bootstrap) as p:
        assert await DeviceCatalogCore(s, p).sync() == (1, 0)  # a new catalog reads what the topic holds first
    async with _writer(s, f"w-{tag}") as w:
        async def moved() -> bool:
            rows = await asyncio.to_thread(_agg, store, s, "1d", d0, d0 + timedelta(days=1), organisation_id=other)
            return bool(rows) and rows[0].devices == 2
        await until(moved, 60, "the move copied from the devices topic", every_s=0.3)


async def test_a_redelivered_batch_doubles_nothing_in_the_raw_copy_or_the_rollups(
        ch: Settings, store: ClickHouseStore) -> None:
    s, tag = ch, uuid.uuid4().hex[:6]
    devices = [f"r-{tag}-{i}" for i in range(6)]  # over every partition
    await register(s.pg_dsn, *devices)
    t0 = _midnight_days_ago(3)
    steps = 96
    await _send(s, [x for d in devices for x in _series(d, t0, steps)])
    total = len(devices) * (steps + 1)

    # A writer stores a batch and dies before it commits (stopped between the two steps).
    async with _writer(s, f"crash-{tag}", run=False) as w:
        stored: list = []
        while len(stored) < total:
            got = await w.poll_batch()
            stored += await w.store(got)
    assert _lag(s) == total, "the crashed writer committed nothing"
    first = queries.raw_counts(store.client("read"), s.clickhouse_database, devices)
    assert first.readings == total

    # Its successor gets every record again and stores it again, then commits.
    async with _writer(s, f"crash-{tag}") as w:
        await until(lambda: _committed_after(s, w, total), 90, "the redelivered batch stored and committed",
                    every_s=0.3)
    again = queries.raw_counts(store.client("read"), s.clickhouse_database, devices)
    assert again.readings == total, "the raw copy holds each reading once"

    # Every rollup: each reading counted once, and the energy is the register's rise, not twice it.
    t0_utc = datetime.fromtimestamp(t0 / 1000, timezone.utc)
    d0 = t0_utc.date()
    ranges = (("30m", t0_utc, t0_utc + timedelta(days=2)), ("1h", t0_utc, t0_utc + timedelta(days=2)),
              ("1d", d0, d0 + timedelta(days=3)), ("1mo", d0.replace(day=1), d0 + timedelta(days=40)))
    for interval, start, end in ranges:
        for device in devices:
            rows = _agg(store, s, interval, start, end, device_id=device)
            assert sum(r.readings for r in rows) == steps + 1, (interval, device)
            assert sum(r.energy or 0 for r in rows) == steps * KWH_PER_STEP, (interval, device)


async def _committed_after(s: Settings, w: ChWriterCore, total: int) -> bool:
    return (await w.ping())["messages"] >= total and _lag(s) == 0


async def test_poison_records_are_dead_lettered_and_the_rest_is_stored(ch: Settings, store: ClickHouseStore) -> None:
    s, tag = ch, uuid.uuid4().hex[:6]
    device = f"p-{tag}"
    await register(s.pg_dsn, device)
    good = _series(device, _midnight_days_ago(1), 7)
    poison = [b"{not json", orjson.dumps({"device_id": device, "ts": int(time.time() * 1000), "source": "x",
                                          "failure": {"kind": "timeout", "detail": "poison"}}),
              codec.encode(ReadingBatch(f"ghost-{tag}", int(time.time() * 1000), "x", (Value(A_PLUS, 1.0, "kWh", 0),)))]
    partition = topics.partition_for(device, s.kafka_partitions)
    async with AsyncProducer(s.kafka_bootstrap) as p:
        await p.send_many([(s.topic(topics.READINGS), partition, device.encode(), codec.encode(b)) for b in good[:4]]
                          + [(s.topic(topics.READINGS), partition, device.encode(), raw) for raw in poison]
                          + [(s.topic(topics.READINGS), partition, device.encode(), codec.encode(b)) for b in good[4:]])
    async with _writer(s, f"p-{tag}") as w:
        await _stored_and_committed(s, store, [device], len(good))
        assert (await w.ping())["dead_letters"] == 3
    assert queries.raw_counts(store.client("read"), s.clickhouse_database, [device]).readings == len(good)
    letters = [codec.decode_dead_letter(v) for _, v in read_topic(s.kafka_bootstrap, s.topic(topics.READINGS_DLQ))]
    mine = sorted((d["raw"], d["stage"], d["reason"]) for d in letters if d["stage"] == "ch-writer")
    assert [m[0] for m in mine] == sorted(poison)
    assert any("failure record reached the readings topic" in m[2] for m in mine)
    assert any(f"unknown device 'ghost-{tag}'" in m[2] for m in mine)


async def test_while_clickhouse_refuses_inserts_nothing_is_committed_and_it_catches_up_after(
        ch: Settings, store: ClickHouseStore) -> None:
    s, tag = ch, uuid.uuid4().hex[:6]
    devices = [f"o-{tag}-{i}" for i in range(4)]
    await register(s.pg_dsn, *devices)
    t0 = _midnight_days_ago(2)
    before = [x for d in devices for x in _series(d, t0, 10)]
    after = [x for d in devices for x in _series(d, t0, 10, first=11)]
    await _send(s, before)
    async with _writer(s, f"o-{tag}") as w:
        await _stored_and_committed(s, store, devices, len(before))
        # ClickHouse takes the raw table away (an operator's DETACH, as for a restore): every insert fails.
        store.client().command(f"DETACH TABLE {s.clickhouse_database}.readings")
        await _send(s, after)

        async def refused() -> bool:
            return (await w.ping())["sink_failures"] >= 2

        await until(refused, 60, "the writer to meet the refusal", every_s=0.3)
        status = await w.ping()
        assert "UNKNOWN_TABLE" in (status["last_error"] or ""), status
        assert _lag(s) == len(after), "no offset moved while ClickHouse refused the batch"
        store.client().command(f"ATTACH TABLE {s.clickhouse_database}.readings")
        await _stored_and_committed(s, store, devices, len(before) + len(after))
        assert (await w.ping())["dead_letters"] == 0, "an outage is not bad data"
    counts = queries.raw_counts(store.client("read"), s.clickhouse_database, devices)
    assert counts.readings == len(before) + len(after)
    d0 = datetime.fromtimestamp(t0 / 1000, timezone.utc).date()
    day = _agg(store, s, "1d", d0 - timedelta(days=1), d0 + timedelta(days=2), device_id=devices[0])
    assert sum(x.readings for x in day) == 22 and sum(x.energy or 0 for x in day) == 21 * KWH_PER_STEP

