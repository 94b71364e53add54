"""Backfill rows asked for by the gap scan, against the real PostgreSQL: one open row per gap however
often it is asked for, a finished one not repeated at once, and partner devices' backfill windows."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import asyncpg
import pytest

from meterray.settings import Settings
from storage.postgres import partners
from storage.postgres.partners import GapBackfill
from storage.secrets import cipher
from tests.partner_docs import ENERGY, meters, partner, readings_path

T = datetime(2026, 11, 20, 10, tzinfo=timezone.utc)
H = timedelta(hours=1)
SETTLE = timedelta(hours=1)


def _gap(since: datetime, until: datetime, device: str = "bfq-m-0001", quantity: str = ENERGY,
         path: str = "r") -> GapBackfill:
    return GapBackfill("bfq", path, device, quantity, since, until)


async def _rows(conn: asyncpg.Connection) -> list[tuple]:
    return [tuple(r.values()) for r in await conn.fetch(
        "SELECT device_id, quantity, since, until, status FROM partners.backfills WHERE partner_id = 'bfq'"
        " ORDER BY id")]


async def test_a_gap_asked_for_again_while_open_or_just_finished_gets_no_second_row(database: Settings) -> None:
    conn = await asyncpg.connect(database.pg_dsn)
    try:
        doc = partner("bfq", "http://127.0.0.1:9", [readings_path("r", "json", "cursor", meters(1, 2))], meters(1, 2))
        await partners.save_partner(conn, doc, cipher(database))
        await conn.execute("DELETE FROM partners.backfills WHERE partner_id = 'bfq'")
        first, again, inside, other_device, other_quantity = await partners.request_backfills(conn, [
            _gap(T, T + 3 * H), _gap(T, T + 3 * H), _gap(T + H, T + 2 * H), _gap(T, T + 3 * H, device="bfq-m-0002"),
            _gap(T, T + 3 * H, quantity="1-0:2.8.0", path="export")], SETTLE)
        assert first is not None and again is None and inside is None  # the same gap, and a part of it: covered
        # Another meter's gap on the same path is covered too: the path's fetch brings every meter's readings.
        assert other_device is None
        assert other_quantity is not None  # another path
        # A wider range is not covered by the open row: it is asked for (the partner sends the difference too).
        wider, = await partners.request_backfills(conn, [_gap(T - H, T + 3 * H)], SETTLE)
        assert wider is not None
        assert len(await _rows(conn)) == 3

        # Finished (done, or failed for good) a moment ago: not asked again within the settle time ...
        await partners.save_backfill(conn, first, "done", None, 3, 100)
        await partners.save_backfill(conn, wider, "failed", None, 0, 0, "HTTP 404")
        assert await partners.request_backfills(conn, [_gap(T, T + 3 * H)], SETTLE) == [None]
        # ... and asked again after it (settle 0: it finished long enough ago), once.
        again_later = await partners.request_backfills(conn, [_gap(T, T + 3 * H), _gap(T, T + 3 * H)], timedelta(0))
        assert again_later[0] is not None and again_later[1] is None
        assert [r[4] for r in await _rows(conn)] == ["done", "pending", "failed", "pending"]

        # The database keeps one open row per exact gap whatever the caller does.
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO partners.backfills (partner_id, path, since, until, device_id, quantity)"
                               " VALUES ('bfq', 'r', $1, $2, 'bfq-m-0001', $3)", T, T + 3 * H, ENERGY)
        with pytest.raises(asyncpg.CheckViolationError):  # a device without its quantity
            await conn.execute("INSERT INTO partners.backfills (partner_id, path, since, until, device_id)"
                               " VALUES ('bfq', 'r', $1, $2, 'bfq-m-0001')", T, T + 5 * H)
    finally:
        await conn.execute("DELETE FROM partners.backfills WHERE partner_id = 'bfq'")
        await partners.delete_partner(conn, "bfq")
        await conn.close()


async def test_a_partners_devices_get_its_backfill_window(database: Settings) -> None:
    conn = await asyncpg.connect(database.pg_dsn)
    try:
        f = cipher(database)
        doc = partner("bfw", "http://127.0.0.1:9", [readings_path("r", "json", "cursor", meters(1, 2))], meters(1, 2))

        async def windows() -> dict[str, timedelta | None]:
            return {r["id"]: r["backfill_window"] for r in await conn.fetch(
                "SELECT id, backfill_window FROM devices.devices WHERE id LIKE 'bfw-%' ORDER BY id")}

        await partners.save_partner(conn, doc, f)
        assert await windows() == {"bfw-m-0001": timedelta(days=7), "bfw-m-0002": timedelta(days=7)}  # the default
        await partners.save_partner(conn, {**doc, "backfill_window_s": 86_400}, f)
        assert await windows() == {"bfw-m-0001": timedelta(days=1), "bfw-m-0002": timedelta(days=1)}
        await partners.save_partner(conn, {**doc, "backfill_window_s": None}, f)  # it keeps no history
        assert await windows() == {"bfw-m-0001": None, "bfw-m-0002": None}
        assert (await partners.partners_of(conn, ["bfw-m-0001", "bfw-m-0002", "nobody"])
                == {"bfw-m-0001": "bfw", "bfw-m-0002": "bfw"})
    finally:
        await partners.delete_partner(conn, "bfw")
        await conn.close()
