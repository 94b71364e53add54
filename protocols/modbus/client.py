"""Modbus TCP transport: one `ModbusEndpoint` per TCP endpoint (a meter or an RTU gateway).

It moves registers and nothing else: no retries, no backoff, no reconnect loop — the caller owns
those policies. Every failure leaves here as a typed `ModbusError` carrying a `FailureKind` and a
`retriable` flag; pymodbus exceptions are translated once, in `read_registers`/`connect`.

pymodbus 3.16 notes (from its source, client/base.py, transaction/transaction.py,
transport/transport.py):
- `AsyncModbusTcpClient(reconnect_delay=0.1)` by default starts its own reconnect task when the
  connection drops; we pass `reconnect_delay=0` so a lost connection stays lost until `connect()`.
- `execute()` silently reconnects when the transport is gone; we refuse to send on a closed
  endpoint instead, so reconnects happen where the caller decides.
- its response timeout logs an error per timed-out request and closes the socket after
  retries+3 consecutive timeouts; `read_registers` sends the request and awaits the response
  future itself, with one timer of its own (`_exchange`), so neither happens.
- when the peer closes the socket mid-request pymodbus only notices at the timeout; the
  `trace_connect` hook fails the pending response at once (ConnectionLost, not Timeout).
- `connect()` swallows OSError and returns False: "refused" and "unreachable" look the same.
"""
from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, ReadInputRegistersRequest

from meterray.domain import FailureKind, Value

from .codec import NoValue, UndecodableAnswerError, decode_block
from .planner import plan_blocks
from .profiles import MODBUS_MAX_READ, READ_FUNCTION_CODES, Profile

# Modbus application protocol v1.1b3 §7 "MODBUS Exception Responses".
EXCEPTION_MEANINGS: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge (request accepted, still processing)",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
# Codes that say "try again later" rather than "this request is wrong for this device".
_TRANSIENT_CODES = frozenset({4, 5, 6, 10, 11})


class ModbusError(Exception):
    """A failed Modbus exchange; `kind` says why, `retriable` whether the same request may succeed later."""

    kind: FailureKind = FailureKind.BAD_RESPONSE
    retriable: bool = True
    raw_words: tuple[int, ...] | None = None  # the answer's words, when one arrived but cannot be decoded


class ModbusTimeoutError(ModbusError):
    kind = FailureKind.TIMEOUT


class ModbusConnectError(ModbusError):
    """The TCP connection could not be opened (refused, unreachable, or no answer in time)."""

    kind = FailureKind.CONNECTION_REFUSED


class ModbusConnectionLostError(ModbusError):
    """The connection closed during a request, or the endpoint is not connected."""

    kind = FailureKind.CONNECTION_LOST


class ModbusBadResponseError(ModbusError):
    """An answer arrived but is not the answer to this request (short, malformed, wrong id)."""

    kind = FailureKind.BAD_RESPONSE

    def __init__(self, message: str, raw_words: tuple[int, ...] | None = None) -> None:
        super().__init__(message)
        self.raw_words = raw_words


class ModbusExceptionCodeError(ModbusError):
    """The device answered with a Modbus exception response."""

    kind = FailureKind.EXCEPTION_CODE

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.meaning = EXCEPTION_MEANINGS.get(code, "unknown exception code")
        self.retriable = code in _TRANSIENT_CODES


class _LinkDownError(Exception):
    """Internal: set on pymodbus's pending response future when the socket closes."""


def _expire(future: asyncio.Future[ModbusPDU]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class ModbusEndpoint:
    """One TCP endpoint, one request in flight at a time (an RTU gateway serialises its bus)."""

    def __init__(self, host: str, port: int = 502, timeout_s: float = 1.0) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()
        self._in_flight = False
        self._name = f"{host}:{port}"

    def __repr__(self) -> str:
        return f"ModbusEndpoint({self._name}, timeout_s={self.timeout_s}, connected={self.connected})"

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        """(Re)open the connection; raises ModbusConnectError. Safe to call after any failure."""
        self._close_client()
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            name=self._name,
            # pymodbus uses this for both connect and response; ours (asyncio.timeout) fires first.
            timeout=self.timeout_s + 1.0,
            retries=0,
            reconnect_delay=0,  # no pymodbus reconnect task: the caller owns reconnects
            trace_connect=self._on_connect_change,
        )
        self._client = client
        try:
            async with asyncio.timeout(self.timeout_s):
                ok = await client.connect()
        except TimeoutError:
            self._close_client()
            raise ModbusConnectError(f"{self._name}: no answer to TCP connect within {self.timeout_s}s") from None
        if not ok:
            self._close_client()
            raise ModbusConnectError(f"{self._name}: cannot connect (refused or unreachable)")

    async def close(self) -> None:
        """Close the connection; safe to call twice or when never connected."""
        self._close_client()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _on_connect_change(self, connected: bool) -> None:
        """pymodbus trace_connect hook: fail the pending request at once when the socket closes."""
        if connected or not self._in_flight or self._client is None:
            return
        future = getattr(self._client.ctx, "response_future", None)  # pymodbus 3.16 TransactionManager
        if future is not None and not future.done():
            future.set_exception(_LinkDownError())

    async def read_registers(self, unit_id: int, function_code: int, start: int, count: int) -> list[int]:
        """Read `count` registers from `start` (0-based protocol address) of unit `unit_id`.

        Raises ValueError for arguments no device could accept, ModbusError subclasses for
        everything that went wrong on the wire.
        """
        if function_code not in READ_FUNCTION_CODES:
            raise ValueError(f"function_code must be 3 or 4, got {function_code}")
        if not (1 <= count <= MODBUS_MAX_READ and 0 <= start and start + count <= 0x10000):
            raise ValueError(f"cannot read {count} registers from {start}: 1..125 registers within 0..0xFFFF")
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit_id must be 0..255, got {unit_id}")
        request_class = ReadInputRegistersRequest if function_code == 4 else ReadHoldingRegistersRequest
        async with self._lock:
            client = self._client
            if client is None or not client.connected:
                raise ModbusConnectionLostError(f"{self._name}: not connected; call connect() first")
            self._in_flight = True
            try:
                response = await self._exchange(client, request_class(address=start, count=count, dev_id=unit_id))
            except TimeoutError:
                where = self._where(unit_id, function_code, start, count)
                raise ModbusTimeoutError(f"{where}: no answer within {self.timeout_s}s") from None
            except _LinkDownError as err:
                where = self._where(unit_id, function_code, start, count)
                raise ModbusConnectionLostError(f"{where}: connection closed by the peer") from err
            except ConnectionException as err:
                raise ModbusConnectionLostError(f"{self._where(unit_id, function_code, start, count)}: {err}") from err
            except ModbusException as err:
                raise ModbusBadResponseError(f"{self._where(unit_id, function_code, start, count)}: {err}") from err
            finally:
                self._in_flight = False
        if response.isError():
            code = response.exception_code
            meaning = EXCEPTION_MEANINGS.get(code, "unknown exception code")
            where = self._where(unit_id, function_code, start, count)
            raise ModbusExceptionCodeError(code, f"{where}: exception {code} ({meaning})")
        registers = response.registers
        if len(registers) != count:
            where = self._where(unit_id, function_code, start, count)
            raise ModbusBadResponseError(f"{where}: answer holds {len(registers)} registers", tuple(registers))
        return registers  # type: ignore[return-value]  # pymodbus builds a fresh list per response

    def _where(self, unit_id: int, function_code: int, start: int, count: int) -> str:
        return f"{self._name} unit {unit_id} fc{function_code} 0x{start:04X}+{count}"

    async def _exchange(self, client: AsyncModbusTcpClient, request: ModbusPDU) -> ModbusPDU:
        """One request, one response, one timer: pymodbus 3.16's `TransactionManager.execute` minus its
        own lock, `asyncio.wait_for` and retry bookkeeping, which our lock and timeout make redundant.

        Profiled at 2,000 meters/s (py-spy, 2026-11-26): the public path (`asyncio.timeout` around
        `execute`, which takes a second lock and runs `wait_for` with a second timer) cost about as
        much CPU again as pymodbus's own framing. Frames with another transaction or unit id are
        already dropped by the framer (`FramerBase.handleFrame`); the checks below mirror `execute`.
        """
        ctx = client.ctx
        request.transaction_id = ctx.getNextTID()
        ctx.recv_buffer = b""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ModbusPDU] = loop.create_future()
        ctx.response_future = future  # resolved by ctx.callback_data, failed by _on_connect_change
        ctx.pdu_send(request)
        timer = loop.call_later(self.timeout_s, _expire, future)
        try:
            response = await future
        finally:
            timer.cancel()
        if request.dev_id and response.dev_id != request.dev_id:
            raise ModbusException(f"answer from unit {response.dev_id}, asked unit {request.dev_id}")
        if response.transaction_id and response.transaction_id != request.transaction_id:
            raise ModbusException(f"answer to transaction {response.transaction_id}, sent {request.transaction_id}")
        return response

    async def read_device(self, profile: Profile, unit_id: int) -> tuple[list[Value], list[NoValue]]:
        """Read and decode every block of `profile` from `unit_id`, one request at a time, as the
        profile's planner settings allow (its request limit and its `max_hole`).

        A transport failure on any block raises (the poll is all or nothing), and so does an
        answer that cannot be decoded (ModbusBadResponseError carrying the raw words). Quantities
        the meter reports as "no value" (its declared error value, NaN) come back as NoValue
        next to the good values: the meter answered, it just has nothing for them.
        """
        values: list[Value] = []
        missing: list[NoValue] = []
        for block in plan_blocks(profile):
            registers = await self.read_registers(unit_id, block.function_code, block.start, block.count)
            try:
                v, m = decode_block(block, registers, profile.word_order)
            except UndecodableAnswerError as err:
                raise ModbusBadResponseError(
                    f"{self._name} unit {unit_id} fc{block.function_code} 0x{block.start:04X}+{block.count}: "
                    f"{err.reason}", err.raw_words) from err
            values.extend(v)
            if m:
                missing.extend(m)
        return values, missing
