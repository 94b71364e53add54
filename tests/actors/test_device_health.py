"""The device processor's inactivity sweep and its checkpoint on the real Kafka and PostgreSQL: a
device that never sends anything is declared OFFLINE (no_data) once; a processor that takes the
partitions over reloads every device's state and announces nothing again."""
from __future__ import annotations

import asyncio
import time

import asyncpg

from actors.device_processor import DeviceProcessorCore
from meterray.domain import DeviceSpec, DeviceStatus, ModbusConnection, ReadingBatch, Value
from meterray.settings import Settings
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer
from storage.postgres import devices as device_repo
from tests.pipeline.helpers import read_topic

ENERGY, VOLTS = "1-0:1.8.0", "1-0:32.7.0"


async def _register_polled_every_second(dsn: str, *device_ids: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        devices = tuple(DeviceSpec(d, "sdm630", unit) for unit, d in enumerate(device_ids, start=1))
        # TEST-NET-1 (RFC 5737): never polled here; the 1 s interval sets the devices' timeout (5 s).
        await device_repo.save_modbus_connections(conn, [ModbusConnection(f"test-{device_ids[0]}", "192.0.2.1", 502,
                                                                          1.0, 0.5, devices)])
    finally:
        await conn.close()


async def _talk(s: Settings, device_id: str, seconds: float) -> None:
    """A live meter: a reading every half second, its counter and voltage moving."""
    raw = s.topic(topics.READINGS_RAW)
    partition = topics.partition_for(device_id, s.kafka_partitions)
    async with AsyncProducer(s.kafka_bootstrap) as p:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ts = int(time.time() * 1000)
            batch = ReadingBatch(device_id, ts, "test", (Value(ENERGY, 100.0 + ts / 3.6e9, "kWh", 0),
                                                         Value(VOLTS, 230.0 + (ts % 1000) / 1000, "V", 0)))
            await p.send_many([(raw, partition, device_id.encode(), codec.encode(batch))])
            await asyncio.sleep(0.5)


async def _status(pool: asyncpg.Pool, device_id: str) -> tuple[str, tuple[str, ...]] | None:
    st = (await device_repo.load_states(pool, [device_id])).get(device_id)
    return None if st is None else (st.status, st.reasons)


def _moves(s: Settings, device_id: str) -> list[tuple[str, str, tuple[str, ...]]]:
    events = [codec.decode_event(v) for k, v in read_topic(s.kafka_bootstrap, s.topic(topics.DEVICE_EVENTS))
              if k == device_id.encode()]
    return [(e.previous.value, e.status.value, e.reasons) for e in events if e.kind == "status"]


async def test_a_silent_device_goes_offline_once_and_a_successor_remembers_it(own: Settings) -> None:
    s = own
    silent, talker = "sweep-silent-1", "sweep-talker-1"
    await _register_polled_every_second(s.pg_dsn, silent, talker)
    pool = await asyncpg.create_pool(s.pg_dsn, min_size=1, max_size=2)
    try:
        for run in range(2):  # the second processor takes the partitions over from the first's checkpoints
            producer = AsyncProducer(s.kafka_bootstrap)
            core = DeviceProcessorCore(s, pool, producer, "test-sweeper")
            await core.start()
            talking = asyncio.create_task(_talk(s, talker, 12.0))
            try:
                if run == 0:
                    deadline = time.monotonic() + 60
                    while await _status(pool, silent) != (DeviceStatus.OFFLINE, ("no_data",)):
                        assert time.monotonic() < deadline, await core.ping()
                        await asyncio.sleep(0.3)
                await talking
                ping = await core.ping()
                assert ping["devices"] == {"online": 1, "offline": 1}, ping  # both loaded, silent one included
            finally:
                talking.cancel()
                await core.stop()
                await producer.close()
        assert await _status(pool, talker) == (DeviceStatus.ONLINE, ())
    finally:
        await pool.close()
    # One event per transition, across both processors: nothing announced again after the takeover.
    assert _moves(s, silent) == [("unknown", "offline", ("no_data",))]
    assert _moves(s, talker) == [("unknown", "online", ())]
