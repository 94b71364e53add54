"""An asyncio face on confluent-kafka's producer: one per actor process, idempotent, acks=all, lz4.

Delivery reports are served by `poll(0)` on the event loop's own thread, so callbacks resolve
futures directly; `send_many` returns once Kafka has confirmed every message of the batch, `deliver`
returns each message's outcome so a caller that keeps its own buffer re-produces only what failed.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

OutMessage = tuple[str, int, bytes | None, bytes]  # (topic, partition, key, value)


class DeliveryError(RuntimeError):
    """Kafka refused or lost a message; the caller must not commit what it came from."""

    def __init__(self, error: KafkaError) -> None:
        super().__init__(str(error))
        self.error = error


# Errors about one record (its size or format), not about the way to the broker.
RECORD_ERRORS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG, KafkaError.INVALID_MSG_SIZE,
                           KafkaError.INVALID_RECORD, KafkaError.RECORD_LIST_TOO_LARGE})
# Errors that re-producing the same message cannot cure: the record itself is refused, or the rights.
_PERMANENT = RECORD_ERRORS | {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError._INVALID_ARG}


def is_permanent(err: KafkaError) -> bool:
    """True when Kafka refused the record itself (size, format, rights): retrying cannot help."""
    return err.fatal() or err.code() in _PERMANENT


class _BatchWaiter:
    """Collects the delivery report of each message of one batch, by position."""

    __slots__ = ("future", "pending", "errors")

    def __init__(self, future: asyncio.Future[list[KafkaError | None]], size: int) -> None:
        self.future, self.pending = future, size
        self.errors: list[KafkaError | None] = [None] * size

    def report(self, index: int) -> Any:
        def done(err: KafkaError | None, _msg: Any) -> None:
            self.errors[index] = err
            self.pending -= 1
            if self.pending == 0 and not self.future.done():
                self.future.set_result(self.errors)

        return done


class AsyncProducer:
    def __init__(self, bootstrap: str, **config: Any) -> None:
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": "lz4",
                "linger.ms": 5,
                "batch.num.messages": 10000,
                **config,
            }
        )
        self._poller: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll_loop(), name="kafka-delivery-reports")

    async def _poll_loop(self) -> None:
        while True:
            self._producer.poll(0)
            await asyncio.sleep(0.005 if len(self._producer) else 0.02)

    async def send_many(self, messages: Iterable[OutMessage]) -> None:
        """Produce (topic, partition, key, value) messages; return when all are acknowledged."""
        errors = await self.deliver(list(messages))
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise DeliveryError(first)

    async def deliver(self, batch: list[OutMessage]) -> list[KafkaError | None]:
        """Produce every message; once each has its delivery report, return them by position
        (None: acknowledged by every in-sync replica)."""
        await self.start()
        if not batch:
            return []
        loop = asyncio.get_running_loop()
        waiter = _BatchWaiter(loop.create_future(), len(batch))
        for i, (topic, partition, key, value) in enumerate(batch):
            done = waiter.report(i)
            while True:
                try:
                    self._producer.produce(topic, value, key, partition=partition, on_delivery=done)
                    break
                except BufferError:
                    # The local queue is full: let delivery reports drain it instead of buffering more.
                    self._producer.poll(0)
                    await asyncio.sleep(0.01)
                except KafkaException as err:
                    done(err.args[0], None)
                    break
        return await waiter.future

    async def flush(self, timeout_s: float = 10.0) -> int:
        return await asyncio.to_thread(self._producer.flush, timeout_s)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._poller is not None:
            self._poller.cancel()
        await self.flush()

    async def __aenter__(self) -> "AsyncProducer":
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()
