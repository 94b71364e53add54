"""The consumer survives a broker it cannot reach: it logs once and returns nothing, as while
Kafka restarts, and only errors no retry can cure end a stage."""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

import pytest

from storage.kafka.consumer import AsyncConsumer


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_brokers_return_nothing_and_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    consumer = AsyncConsumer(f"127.0.0.1:{_unused_port()}", "unreachable-test", ["nothing"],
                             **{"reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 200})
    caplog.set_level(logging.WARNING, logger="storage.kafka.consumer")
    try:
        deadline = time.monotonic() + 5
        calls = 0
        while time.monotonic() < deadline:
            assert await consumer.get_batch(100, timeout_s=0.2) == []
            calls += 1
        warnings = [r.getMessage() for r in caplog.records if r.name == "storage.kafka.consumer"]
        assert warnings, "the outage was not reported"
        assert len(warnings) == len(set(warnings)) and len(warnings) <= 3, warnings  # once per kind of error
        assert calls > 5
    finally:
        await consumer.close()


async def _drain(consumer: AsyncConsumer, seconds: float, rewind: bool = False,
                 until: Callable[[list], bool] | None = None, timeout_s: float = 60.0) -> list:
    """Consume for `seconds`; with `until`, until it holds for what was consumed (then `seconds` more)."""
    got: list = []
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline or (until is not None and not until(got)):
        assert time.monotonic() - started < timeout_s, f"condition not met within {timeout_s}s"
        batch = await consumer.get_batch(100, timeout_s=0.3)
        if rewind and batch:
            consumer.rewind(batch)
        got += batch
    return got


async def test_partitions_assigned_while_paused_stay_paused_and_nothing_is_skipped(stores) -> None:
    from confluent_kafka import Producer

    from storage.kafka import topics as topic_names

    s = stores.model_copy(update={"kafka_topic_prefix": f"{stores.kafka_topic_prefix}cons-{time.monotonic_ns()}."})
    topic_names.ensure_topics(s)
    topic = s.topic(topic_names.READINGS)
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap})

    def produce(tag: bytes) -> None:
        for i in range(40):
            producer.produce(topic, tag + b"%d" % i, partition=i % s.kafka_partitions)
        producer.flush(10)

    group = s.topic("pause-test")
    a = AsyncConsumer(s.kafka_bootstrap, group, [topic])
    b: AsyncConsumer | None = None
    try:
        produce(b"x")
        got_a = await _drain(a, 4)
        await a.commit(got_a)
        # b joins only now: a member that joined earlier but never polled would hold the group's
        # rebalance (and a's commit behind it) until its poll interval ran out.
        b = AsyncConsumer(s.kafka_bootstrap, group, [topic])
        deadline = time.monotonic() + 30
        while not (a.owned() and b.owned()):  # b joins: the partitions are shared
            assert time.monotonic() < deadline, (a.owned(), b.owned())
            await asyncio.gather(a.get_batch(100, 0.3), b.get_batch(100, 0.3))
        taken_by_b = set(b.owned())
        a.pause()
        produce(b"y")
        await b.close()  # leaves: its partitions move to a, which is paused
        # Until a owns b's partitions, and 3 s more: a fetch from them would show up meanwhile.
        stray = await _drain(a, 3, rewind=True, until=lambda _: set(a.owned()) >= taken_by_b)
        assert stray == [], "a partition assigned during the pause was fetched"
        a.resume()
        after = await _drain(a, 1, until=lambda got: {m.value() for m in got} >= {b"y%d" % i for i in range(40)})
        values = sorted(m.value() for m in got_a + after)
        # x: whatever a had not committed before b took it comes again; y: all of it, once.
        assert [v for v in values if v.startswith(b"y")] == sorted(b"y%d" % i for i in range(40))
        assert {v for v in values if v.startswith(b"x")} == {b"x%d" % i for i in range(40)}
    finally:
        await a.close()
        if b is not None:
            await b.close()
