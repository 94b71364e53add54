"""Domain types that cross actors and Kafka: readings travel in batches, never one by one."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntFlag, StrEnum

import msgspec


class Quality(IntFlag):
    """Data-quality flags carried with every reading (a bitmask, stored as an integer)."""

    OK = 0
    COUNTER_DECREASE = 1  # cumulative register went down: rollover, reset or replacement
    DUPLICATE = 2  # same key seen before with a different value
    FUTURE_TIMESTAMP = 4
    ESTIMATED = 8
    SUSPECT = 16


class FailureKind(StrEnum):
    """Why a poll produced no readings; a timeout is not a bad address."""

    TIMEOUT = "timeout"
    CONNECTION_REFUSED = "connection_refused"
    CONNECTION_LOST = "connection_lost"
    EXCEPTION_CODE = "exception_code"  # the device answered a Modbus exception
    BAD_RESPONSE = "bad_response"  # an answer arrived but cannot be decoded
    AUTH = "auth"
    CONFIGURATION = "configuration"  # the stored configuration cannot be used (e.g. a profile the code lacks)
    HOST_UNRESOLVED = "host_unresolved"  # the connection's host name does not resolve (DNS)
    DEVICE_OFFLINE = "device_offline"  # a data partner reports the device offline (its view of the meter)
    DEVICE_ALARM = "device_alarm"  # a data partner reports an error code, a low battery or tamper


class Value(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One quantity of a reading. A msgspec struct, not a dataclass: a poll makes a few dozen of
    them and every stage decodes them again; a struct is built (and decoded from its JSON array
    `[quantity, value, unit, quality]`) about 8x faster, measured at 2,000 meters/s."""

    quantity: str  # OBIS code, see meterray.quantities
    value: float
    unit: str
    quality: int  # no default: on the wire a value is always the full [quantity, value, unit, quality]


@dataclass(frozen=True, slots=True)
class ReadingBatch:
    """All values one device reported for one instant (one poll, one message, one partner row).

    `ts_ms` is UTC epoch milliseconds; for polled meters it is the poll slot, so a repeated poll of
    the same slot lands on the same key `(device_id, quantity, ts)` and is written once.
    """

    device_id: str
    ts_ms: int
    source: str
    values: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class PollFailure:
    """A transport or decoding failure, keyed by device like readings so one owner sees both in order."""

    device_id: str
    ts_ms: int
    source: str
    kind: FailureKind
    detail: str


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A device behind a connection: which profile decodes it and at which address it answers."""

    device_id: str
    profile: str
    unit_id: int


@dataclass(frozen=True, slots=True)
class ModbusConnection:
    """One Modbus TCP endpoint (a meter or an RTU gateway) and the devices polled through it."""

    connection_id: str
    host: str
    port: int
    poll_interval_s: float
    timeout_s: float
    devices: tuple[DeviceSpec, ...] = field(default_factory=tuple)


class DeviceStatus(StrEnum):
    UNKNOWN = "unknown"
    ONLINE = "online"
    DEGRADED = "degraded"  # failing polls, not yet long enough to call it offline
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """A change in a device's health or data that someone may need to hear about."""

    device_id: str
    ts_ms: int
    kind: str  # "status" or "counter_decrease"
    status: DeviceStatus
    previous: DeviceStatus
    reason: str
