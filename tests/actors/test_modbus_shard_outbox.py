"""The shard outbox: bounded in bytes, drops the oldest waiting poll cycles (counted), never the batch
Kafka holds, and keeps every record Kafka did not acknowledge, in order."""
from __future__ import annotations

import pytest

from actors.shard_outbox import Entry, Outbox, OutRecord


def _entry(slot: int, n: int = 2, size: int = 100) -> Entry:
    records: list[OutRecord] = [("readings.raw", 0, b"dev", bytes([i]) * (size - 3)) for i in range(n)]
    return Entry("sim-c", slot, 0.0, n, 10 * n, records)


def test_overflow_drops_the_oldest_waiting_cycles_and_counts_them() -> None:
    box = Outbox(max_bytes=1000)  # five entries of 2 × 100 bytes fit
    drops = [box.put(_entry(slot)) for slot in range(8)]
    assert [d.entries for d in drops] == [0, 0, 0, 0, 0, 1, 1, 1]
    assert sum(d.records for d in drops) == 6 and sum(d.readings for d in drops) == 60
    assert box.nbytes == 1000 and box.records == 10 and len(box) == 5
    assert [e.slot_ms for e in box.take(max_records=100)][:1] == [3]  # slots 0..2 were the oldest


def test_the_batch_in_flight_is_never_dropped_and_is_capped_at_a_quarter_of_the_bound() -> None:
    box = Outbox(max_bytes=1000)
    for slot in range(5):
        box.put(_entry(slot))
    batch = box.take(max_records=100)
    assert [e.slot_ms for e in batch] == [0]  # 250 bytes allowed: one entry of 200
    for slot in range(5, 12):
        box.put(_entry(slot))
    assert box.nbytes <= 1000
    assert box.take(max_records=100) == []  # one batch in flight at a time
    done = box.settle([[]])
    assert [e.slot_ms for e in done.done] == [0] and done.retried == 0
    assert box.take(max_records=100)[0].slot_ms == 8  # 1..7 overflowed while 0 was in flight


def test_records_kafka_did_not_take_go_back_first_and_refused_ones_leave() -> None:
    box = Outbox(max_bytes=10_000)
    for slot in range(3):
        box.put(_entry(slot, n=3))
    batch = box.take(max_records=6)
    assert [e.slot_ms for e in batch] == [0, 1]
    settled = box.settle(retry=[[1, 2], []], refused=[[0], [2]])
    assert [e.slot_ms for e in settled.done] == [1]
    assert settled.retried == 2 and settled.refused == 2
    assert box.records == 2 + 3 and box.nbytes == 500
    again = box.take(max_records=100)
    assert [(e.slot_ms, len(e.records)) for e in again] == [(0, 2), (2, 3)]
    assert [r[3][0] for r in again[0].records] == [1, 2]  # the two records that failed, in order
    assert box.settle([[], []]).retried == 0 and len(box) == 0 and box.nbytes == 0


def test_settle_refuses_outcomes_that_do_not_match_the_batch() -> None:
    box = Outbox(max_bytes=10_000)
    box.put(_entry(0))
    box.take(max_records=10)
    with pytest.raises(ValueError, match="outcomes"):
        box.settle([[], []])
