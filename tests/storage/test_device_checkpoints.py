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
