"""The consumer survives a broker it cannot reach: it logs once and returns nothing, as while
Kafka restarts, and only errors no retry can cure end a stage."""
from __future__ import annotations

import logging
import socket
import time

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
