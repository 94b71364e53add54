"""Device-processor checkpoints keep their input position and never move back on a partition."""
from __future__ import annotations

import asyncpg

from meterray.device_state import DeviceCheckpoint
from meterray.settings import Settings
from storage.postgres import devices


def _cp(device_id: str, failures: int, partition: int | None, offset: int | None) -> DeviceCheckpoint:
    return DeviceCheckpoint(device_id, "degraded", None, "timeout", "no answer", None, failures, {},
                            partition, offset)


async def test_a_late_save_from_an_older_position_does_not_overwrite_a_newer_checkpoint(database: Settings) -> None:
    conn = await asyncpg.connect(database.pg_dsn)
    try:
        await devices.save_states(conn, [_cp("cp-a", 2, 1, 100)])
        await devices.save_states(conn, [_cp("cp-a", 9, 1, 90)])  # a processor that lost the partition, late
        await devices.save_states(conn, [_cp("cp-a", 9, 1, 100)])  # the same position again
        assert (await devices.load_states(conn, ["cp-a"]))["cp-a"] == _cp("cp-a", 2, 1, 100)
        await devices.save_states(conn, [_cp("cp-a", 3, 1, 101)])
        assert (await devices.load_states(conn, ["cp-a"]))["cp-a"] == _cp("cp-a", 3, 1, 101)
        await devices.save_states(conn, [_cp("cp-a", 1, 2, 5)])  # another partition: offsets not comparable
        assert (await devices.load_states(conn, ["cp-a"]))["cp-a"] == _cp("cp-a", 1, 2, 5)
        await devices.save_states(conn, [_cp("cp-b", 4, None, None)])  # no position: always stored
        await devices.save_states(conn, [_cp("cp-b", 5, None, None)])
        assert (await devices.load_states(conn, ["cp-b"]))["cp-b"].consecutive_failures == 5
    finally:
        await conn.close()


async def test_a_checkpoint_from_another_topic_is_replaced_whatever_its_offsets(database: Settings) -> None:
    # A topic recreated (or read under another prefix) starts again at offset 0: its positions are
    # not comparable with the old topic's, so the newer checkpoint must win, not the larger offset.
    def cp(failures: int, offset: int, topic: str) -> DeviceCheckpoint:
        return DeviceCheckpoint("cp-t", "degraded", None, "timeout", "no answer", None, failures, {}, 0, offset,
                                topic)

    conn = await asyncpg.connect(database.pg_dsn)
    try:
        await devices.save_states(conn, [cp(2, 16_000, "old.readings.raw")])
        await devices.save_states(conn, [cp(1, 3, "new.readings.raw")])
        assert (await devices.load_states(conn, ["cp-t"]))["cp-t"] == cp(1, 3, "new.readings.raw")
        await devices.save_states(conn, [cp(7, 2, "new.readings.raw")])  # late, same topic: ignored
        assert (await devices.load_states(conn, ["cp-t"]))["cp-t"] == cp(1, 3, "new.readings.raw")
    finally:
        await conn.close()
