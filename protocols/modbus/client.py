"""Modbus TCP transport: one `ModbusEndpoint` per TCP endpoint (a meter or an RTU gateway).

It moves registers and nothing else: no retries, no backoff, no reconnect loop — the caller owns
those policies. Every failure leaves here as a typed `ModbusError` carrying a `FailureKind` and a
`retriable` flag, translated once, where it is detected.

The framing is our own (an asyncio protocol over the MBAP header, Modbus TCP/IP Implementation
Guide v1.0b §3.1.3, and the two read PDUs of the application protocol v1.1b3 §6.3-6.4), not
pymodbus's client: a meterray shard reads registers and nothing else, and at 2,000 meters a second
pymodbus's request and response objects, framer and transaction manager cost about 40 µs of CPU
per request (py-spy, 2026-11-26: half of a shard's busy time), against a few µs for one
`struct.pack` and one `unpack_from` here. Being the transport also answers what the pymodbus client
needed work-arounds for: no reconnect task of its own, no silent reconnect on send, a closed socket
fails the pending request at once (`connection_lost`), and "refused" is told apart from "no answer".
"""
from __future__ import annotations

import asyncio
import struct
from types import TracebackType
from typing import Self, cast

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


_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id (0), length of what follows, unit id
_READ_REQUEST = struct.Struct(">HHHBBHH")  # MBAP + function code, start address, register count
_MAX_ADU = 260  # MBAP (7) + the longest PDU (253): a length field beyond it means the stream is garbage


class _Answer:
    """One awaited answer: the future the protocol resolves, and what it must match."""

    __slots__ = ("future", "transaction_id")

    def __init__(self, future: asyncio.Future[bytes], transaction_id: int) -> None:
        self.future = future
        self.transaction_id = transaction_id


class _LinkDownError(Exception):
    """Internal: the socket closed (or the stream cannot be framed) while a request waited."""


class _ModbusTcpProtocol(asyncio.Protocol):
    """Cuts the byte stream into MBAP frames and hands the awaited one to its waiter.

    A frame with another transaction id is an answer to a request that already timed out: it is
    dropped, and the stream stays in step. A length field no frame can have means we lost the
    frame boundaries; the connection is closed (the caller reconnects) rather than guessed at.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: _Answer | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's TCP transport does not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 7:
            transaction_id, protocol_id, length, _unit = _MBAP.unpack_from(buffer)
            if protocol_id != 0 or not 2 <= length <= _MAX_ADU - 6:
                self._lose(f"not a Modbus TCP frame (protocol id {protocol_id}, length {length})")
                return
            if len(buffer) < 6 + length:
                return
            frame = bytes(buffer[6:6 + length])  # unit id + PDU
            del buffer[:6 + length]
            waiting = self.waiting
            if waiting is not None and waiting.transaction_id == transaction_id and not waiting.future.done():
                waiting.future.set_result(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(_LinkDownError(f"connection closed by the peer{f' ({exc})' if exc else ''}"))

    def _lose(self, reason: str) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._fail(_LinkDownError(reason))

    def _fail(self, err: Exception) -> None:
        waiting = self.waiting
        if waiting is not None and not waiting.future.done():
            waiting.future.set_exception(err)


def _expire(future: asyncio.Future[bytes]) -> None:
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
        self._protocol: _ModbusTcpProtocol | None = None
        self._lock = asyncio.Lock()
        self._transaction_id = 0
        self._name = f"{host}:{port}"

    def __repr__(self) -> str:
        return f"ModbusEndpoint({self._name}, timeout_s={self.timeout_s}, connected={self.connected})"

    @property
    def connected(self) -> bool:
        return self._protocol is not None and self._protocol.transport is not None

    async def connect(self) -> None:
        """(Re)open the connection; raises ModbusConnectError. Safe to call after any failure."""
        self._close_transport()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout_s):
                _, protocol = await loop.create_connection(_ModbusTcpProtocol, self.host, self.port)
        except TimeoutError:
            raise ModbusConnectError(f"{self._name}: no answer to TCP connect within {self.timeout_s}s") from None
        except OSError as err:  # refused, unreachable, reset, or a name that does not resolve
            reason = err.strerror or type(err).__name__
            raise ModbusConnectError(f"{self._name}: cannot connect ({reason})") from None
        self._protocol = protocol

    async def close(self) -> None:
        """Close the connection; safe to call twice or when never connected."""
        self._close_transport()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _close_transport(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()

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
        async with self._lock:
            protocol = self._protocol
            if protocol is None or protocol.transport is None:
                raise ModbusConnectionLostError(f"{self._name}: not connected; call connect() first")
            try:
                frame = await self._exchange(protocol, unit_id, function_code, start, count)
            except TimeoutError:
                where = self._where(unit_id, function_code, start, count)
                raise ModbusTimeoutError(f"{where}: no answer within {self.timeout_s}s") from None
            except _LinkDownError as err:
                where = self._where(unit_id, function_code, start, count)
                raise ModbusConnectionLostError(f"{where}: {err}") from err
        return self._registers(frame, unit_id, function_code, start, count)

    def _where(self, unit_id: int, function_code: int, start: int, count: int) -> str:
        return f"{self._name} unit {unit_id} fc{function_code} 0x{start:04X}+{count}"

    async def _exchange(self, protocol: _ModbusTcpProtocol, unit_id: int, function_code: int, start: int,
                        count: int) -> bytes:
        """Send one request and await its frame (unit id + PDU), with one timer."""
        transport = protocol.transport
        assert transport is not None
        self._transaction_id = transaction_id = (self._transaction_id + 1) & 0xFFFF
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        protocol.waiting = _Answer(future, transaction_id)
        transport.write(_READ_REQUEST.pack(transaction_id, 0, 6, unit_id, function_code, start, count))
        timer = loop.call_later(self.timeout_s, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()
            protocol.waiting = None

    def _registers(self, frame: bytes, unit_id: int, function_code: int, start: int, count: int) -> list[int]:
        """The registers of an answer frame, or the typed error it stands for."""
        answered_unit, answered_function = frame[0], frame[1]
        if unit_id and answered_unit != unit_id:
            where = self._where(unit_id, function_code, start, count)
            raise ModbusBadResponseError(f"{where}: answer from unit {answered_unit}")
        if answered_function == function_code | 0x80 and len(frame) == 3:
            code = frame[2]
            meaning = EXCEPTION_MEANINGS.get(code, "unknown exception code")
            where = self._where(unit_id, function_code, start, count)
            raise ModbusExceptionCodeError(code, f"{where}: exception {code} ({meaning})")
        if answered_function != function_code or len(frame) < 3 or frame[2] != len(frame) - 3 or frame[2] % 2:
            where = self._where(unit_id, function_code, start, count)
            raise ModbusBadResponseError(f"{where}: malformed answer (function {answered_function}, "
                                         f"{len(frame) - 1} PDU bytes)")
        n = frame[2] // 2
        registers = list(struct.unpack_from(f">{n}H", frame, 3))
        if n != count:
            where = self._where(unit_id, function_code, start, count)
            raise ModbusBadResponseError(f"{where}: answer holds {n} registers", tuple(registers))
        return registers

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
