"""The bounded outbox between a Modbus shard's poll tasks and its one Kafka sender.

Polling never waits for Kafka: each poll cycle puts its records here and goes on with its slot grid.
The sender takes the oldest entries in one large batch and settles them with Kafka's delivery
reports; an entry leaves the outbox only once every record of it is acknowledged, so a broker
outage costs nothing while the outbox has room. The room is bounded in bytes: past it the oldest
waiting entries are dropped (never the batch Kafka holds), and the drop is counted.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

OutRecord = tuple[str, int, bytes | None, bytes]  # (topic, partition, key, value), as the producer takes it


def record_size(record: OutRecord) -> int:
    return len(record[3]) + len(record[2] or b"")


@dataclass(slots=True)
class Entry:
    """One poll cycle of one connection: its records and what to account when Kafka took them."""

    connection_id: str
    slot_ms: int
    started: float  # time.perf_counter() when the poll began: latency runs to the acknowledgement
    devices: int  # devices polled in the cycle, each one latency sample (0: records of slots not polled)
    readings: int
    records: list[OutRecord]
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.nbytes = sum(record_size(r) for r in self.records)


@dataclass(frozen=True, slots=True)
class Dropped:
    """What an overflow threw away: entries (poll cycles), their records and readings."""

    entries: int = 0
    records: int = 0
    readings: int = 0


@dataclass(frozen=True, slots=True)
class Settled:
    """The outcome of one batch: entries Kafka took in full, records put back, records refused for good."""

    done: list[Entry]
    retried: int
    refused: int


class Outbox:
    """Entries waiting for Kafka and the one batch in flight; bounded by `max_bytes` overall.

    A batch taken by the sender is capped at a quarter of the bound, so three quarters always stay
    for new polls; `settle` returns the acknowledged entries and puts back, oldest first, what
    Kafka did not take.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._waiting: deque[Entry] = deque()
        self._in_flight: list[Entry] = []
        self.nbytes = 0
        self.records = 0
        self.peak_records = 0

    def __len__(self) -> int:
        return len(self._waiting) + len(self._in_flight)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def put(self, entry: Entry) -> Dropped:
        """Add a poll cycle's records; drops the oldest waiting entries if the bound is passed."""
        self._waiting.append(entry)
        self.nbytes += entry.nbytes
        self.records += len(entry.records)
        entries = records = readings = 0
        while self.nbytes > self.max_bytes and self._waiting:
            old = self._waiting.popleft()
            self.nbytes -= old.nbytes
            self.records -= len(old.records)
            entries, records, readings = entries + 1, records + len(old.records), readings + old.readings
        self.peak_records = max(self.peak_records, self.records)
        return Dropped(entries, records, readings)

    def take(self, max_records: int) -> list[Entry]:
        """The oldest waiting entries, at most `max_records` records and a quarter of the bound
        (but at least one entry), now in flight; empty while another batch is in flight."""
        if self._in_flight:
            return []
        budget_bytes, budget_records = max(1, self.max_bytes // 4), max_records
        while self._waiting:
            head = self._waiting[0]
            if self._in_flight and (head.nbytes > budget_bytes or len(head.records) > budget_records):
                break
            self._in_flight.append(self._waiting.popleft())
            budget_bytes -= head.nbytes
            budget_records -= len(head.records)
        return list(self._in_flight)

    def settle(self, retry: Sequence[Sequence[int]], refused: Sequence[Sequence[int]] = ()) -> Settled:
        """Close the batch in flight. For entry i, `retry[i]` are the positions of its records Kafka
        did not take (they go back, before anything newer) and `refused[i]` those it refused for
        good (removed, counted). Entries with nothing left to retry are returned as done."""
        refused = refused or [()] * len(self._in_flight)
        if not len(retry) == len(refused) == len(self._in_flight):
            raise ValueError(f"settle() got {len(retry)}/{len(refused)} outcomes for {len(self._in_flight)} entries")
        done: list[Entry] = []
        back: list[Entry] = []
        n_refused = 0
        for entry, again, bad in zip(self._in_flight, retry, refused, strict=True):
            keep, n_refused = set(again), n_refused + len(bad)
            remaining = [r for i, r in enumerate(entry.records) if i in keep]
            self.nbytes -= entry.nbytes
            self.records -= len(entry.records)
            entry.records = remaining
            entry.nbytes = sum(record_size(r) for r in remaining)
            self.nbytes += entry.nbytes
            self.records += len(remaining)
            (back if remaining else done).append(entry)
        self._in_flight = []
        self._waiting.extendleft(reversed(back))  # retried before anything newer, in their order
        return Settled(done, sum(len(e.records) for e in back), n_refused)
