"""Writes to the analytics copy, and the aggregate reads, over one clickhouse-connect client per use.

Synchronous (clickhouse-connect's chdb backend has no async client): actors call these in a worker
thread. Writes and reads get separate clients, so a long aggregate query does not hold up an insert (a
chDB client serialises the calls on its handle; several handles share the process's one engine).
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import date

from clickhouse_connect.driver.client import Client

from meterray.device_info import DeviceInfo
from storage.clickhouse import client as ch
from storage.clickhouse.schema import ensure_schema

# (device_id, quantity, ts_ms, value, unit, quality, source, day): day is the local date of ts in the
# device's time zone (schema.py says why the writer stamps it).
ChRow = tuple[str, str, int, float, str, int, str, date]
_READING_COLUMNS = ("device_id", "quantity", "ts", "value", "unit", "quality", "source", "day")
_DEVICE_COLUMNS = ("device_id", "name", "protocol", "profile", "organisation_id", "timezone", "deleted", "version")


class ClickHouseStore:
    def __init__(self, url: str, database: str) -> None:
        self.url, self.database = url, database
        self._clients: dict[str, Client] = {}
        self._lock = threading.Lock()
        self._schema_ready = False

    def client(self, use: str = "write") -> Client:
        """Connected on first use, so a server that is down at start is a retried failure, not a dead actor."""
        with self._lock:
            c = self._clients.get(use)
            if c is None:
                c = self._clients[use] = ch.connect(self.url)
            if not self._schema_ready:
                ensure_schema(c, self.database)
                self._schema_ready = True
            return c

    def insert_readings(self, rows: Sequence[ChRow]) -> None:
        """One INSERT (one block: atomic, and the rollup views see it whole). Idempotent: see schema.py."""
        if not rows:
            return
        columns = [list(col) for col in zip(*rows, strict=True)]
        self.client().insert(f"{self.database}.readings", columns, column_names=_READING_COLUMNS,
                             column_oriented=True)

    def upsert_devices(self, records: Sequence[tuple[str, DeviceInfo | None, int]]) -> None:
        """(device_id, its record or None for a tombstone, version: the record's Kafka offset)."""
        if not records:
            return
        rows = [(device_id, d.name if d else "", d.protocol if d else "", d.profile if d else "",
                 d.organisation_id if d else None, (d.timezone or "") if d else "", 0 if d else 1, version)
                for device_id, d, version in records]
        self.client().insert(f"{self.database}.devices", rows, column_names=_DEVICE_COLUMNS)

    def device_timezones(self) -> dict[str, str]:
        """Device id → its own time zone, for the devices that have one."""
        result = self.client("read").query(
            f"SELECT device_id, timezone FROM {self.database}.devices FINAL WHERE deleted = 0 AND timezone != ''")
        return {r[0]: r[1] for r in result.result_rows}

    def close(self) -> None:
        with self._lock:
            for c in self._clients.values():
                c.close()
            self._clients.clear()
