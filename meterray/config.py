"""The edge of stored configuration: what a person may register as a Modbus connection.

One pydantic model, used by `meterray register` (against the profiles the code knows) and by
storage's save functions (against the profiles the database knows), so a bad value is refused
when it is stored, with a message that says what to change, and never reaches a poll loop. The
database holds the same rules as constraints (storage/postgres/migrations/0003_*.sql).

Modbus unit ids:
- Modbus over Serial Line v1.02 §2.2: 0 is the broadcast address (a broadcast request gets no
  answer, so a read cannot use it), 1..247 are device addresses, 248..255 are reserved. A meter
  behind an RTU gateway is such a serial device: 1..247.
- Modbus Messaging on TCP/IP Implementation Guide v1.0b §4.4.2 (MBAP "Unit Identifier"): a device
  reached directly over TCP is addressed by its IP address, the unit id is not significant and
  0xFF (255) is the recommended value; devices commonly answer 0 as well, and many also 1..247.
  So 0 and 255 are accepted only for the single device of a connection (a direct TCP meter),
  never for one of several devices behind a gateway.
"""
from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Collection, Iterable, Sequence
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from meterray.domain import DeviceSpec, ModbusConnection

UNIT_ID_SERIAL = range(1, 248)  # Modbus over Serial Line v1.02 §2.2: individual device addresses
UNIT_ID_DIRECT_TCP = (0, 255)  # TCP/IP Implementation Guide v1.0b §4.4.2: "not significant", 0xFF recommended
MIN_POLL_INTERVAL_S = 0.1  # below this a poll cycle of even one meter on a gateway cannot finish
MAX_POLL_INTERVAL_S = 86_400.0  # once a day
MIN_TIMEOUT_S = 0.05
MAX_TIMEOUT_S = 60.0

# Ids travel as Kafka keys, URL path segments and log fields: printable, no spaces, bounded.
Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}$")]
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")  # RFC 1123 host name label


class ConfigError(ValueError):
    """Configuration that cannot be stored; `problems` lists each, already phrased for a person."""

    def __init__(self, problems: Sequence[str], what: str = "Modbus") -> None:
        self.problems = list(problems)
        super().__init__(f"invalid {what} configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


class DeviceConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    device_id: Identifier
    profile: str
    unit_id: int = Field(ge=0, le=255)

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, v: str, info: ValidationInfo) -> str:
        known = (info.context or {}).get("profiles")
        if known is None:
            raise ValueError("no list of known profiles to check against (a bug in the caller)")
        if v not in known:
            raise ValueError(f"unknown profile {v!r}; known profiles: {', '.join(sorted(known)) or '(none)'}")
        return v

    @field_validator("unit_id")
    @classmethod
    def _not_reserved(cls, v: int) -> int:
        if v not in UNIT_ID_SERIAL and v not in UNIT_ID_DIRECT_TCP:
            raise ValueError(f"unit id {v} is reserved by the Modbus spec (248..255 except 255); use 1..247, "
                             "or 0/255 for a meter reached directly over TCP")
        return v


class ModbusConnectionConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    connection_id: Identifier
    host: str
    port: int = Field(ge=1, le=65535)
    poll_interval_s: float = Field(ge=MIN_POLL_INTERVAL_S, le=MAX_POLL_INTERVAL_S, allow_inf_nan=False)
    timeout_s: float = Field(ge=MIN_TIMEOUT_S, le=MAX_TIMEOUT_S, allow_inf_nan=False)
    devices: tuple[DeviceConfig, ...]

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
            return v
        except ValueError:
            pass
        name = v[:-1] if v.endswith(".") else v
        if not name or len(name) > 253 or not all(_HOST_LABEL.match(label) for label in name.split(".")):
            raise ValueError(f"{v!r} is neither an IP address nor a valid host name (RFC 1123)")
        return v

    @model_validator(mode="after")
    def _coherent(self) -> "ModbusConnectionConfig":
        if not self.devices:
            raise ValueError("devices: a connection needs at least one device")
        if self.timeout_s >= self.poll_interval_s:
            raise ValueError(f"timeout_s {self.timeout_s} must be shorter than poll_interval_s {self.poll_interval_s}"
                             " (a poll must be able to time out before the next one is due)")
        units = [d.unit_id for d in self.devices]
        twice = sorted({u for u in units if units.count(u) > 1})
        if twice:
            raise ValueError(f"unit id(s) {twice} used by more than one device on this connection")
        ids = [d.device_id for d in self.devices]
        if len(set(ids)) != len(ids):
            raise ValueError("a device id appears twice on this connection")
        direct = [u for u in units if u in UNIT_ID_DIRECT_TCP]
        if direct and len(units) > 1:
            raise ValueError(f"unit id {direct[0]} only addresses a single meter reached directly over TCP; "
                             "devices behind a gateway use 1..247")
        return self

    @classmethod
    def of(cls, c: ModbusConnection | dict[str, Any], profiles: Collection[str]) -> "ModbusConnectionConfig":
        data = c if isinstance(c, dict) else {
            "connection_id": c.connection_id, "host": c.host, "port": c.port, "poll_interval_s": c.poll_interval_s,
            "timeout_s": c.timeout_s,
            "devices": [{"device_id": d.device_id, "profile": d.profile, "unit_id": d.unit_id} for d in c.devices]}
        return cls.model_validate(data, context={"profiles": profiles})

    def to_domain(self) -> ModbusConnection:
        return ModbusConnection(self.connection_id, self.host, self.port, self.poll_interval_s, self.timeout_s,
                                tuple(DeviceSpec(d.device_id, d.profile, d.unit_id) for d in self.devices))


def describe(err: ValidationError, what: str) -> list[str]:
    """pydantic's errors as sentences: `connection 'x': devices[1].unit_id: unit id 250 is reserved …`."""
    out = []
    for e in err.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] not in ("value_error", "assertion_error") and "input" in e:
            msg += f" (got {e['input']!r})"
        out.append(f"{what}: {loc + ': ' if loc else ''}{msg}")
    return out


def validate_connections(items: Iterable[ModbusConnection | dict[str, Any]],
                         profiles: Collection[str]) -> list[ModbusConnection]:
    """Every connection checked (all problems reported at once), device ids unique across them all."""
    good: list[ModbusConnection] = []
    problems: list[str] = []
    owner: dict[str, str] = {}
    for i, item in enumerate(items):
        cid = item.get("connection_id") if isinstance(item, dict) else item.connection_id
        what = f"connection {cid!r}" if cid else f"connection #{i + 1}"
        try:
            c = ModbusConnectionConfig.of(item, profiles)
        except ValidationError as err:
            problems += describe(err, what)
            continue
        for d in c.devices:
            if d.device_id in owner:
                problems.append(f"{what}: device {d.device_id!r} is already on connection {owner[d.device_id]!r}")
            owner[d.device_id] = c.connection_id
        good.append(c.to_domain())
    if problems:
        raise ConfigError(problems)
    return good


def connection_problems(c: ModbusConnection, profiles: Collection[str]) -> tuple[list[str], dict[str, str]]:
    """For a connection already stored: (problems of the connection itself, device id → its own problem).

    Only what makes polling impossible: a profile the code does not know (nothing can decode the
    device), a unit id that does not fit the one-byte MBAP field, a port outside TCP's range, an
    interval or timeout that cannot drive a poll loop. Rows stored before the edge rules that are only
    unwise (a reserved unit id, an id with a space, a timeout as long as the interval) keep polling: an
    upgrade must not stop what worked. A poll loop uses this to fail only the devices concerned; it
    never raises.
    """
    conn_level: list[str] = []
    if not (math.isfinite(c.poll_interval_s) and c.poll_interval_s >= MIN_POLL_INTERVAL_S):
        conn_level.append(f"poll_interval_s {c.poll_interval_s} cannot drive a poll loop; "
                          f"set {MIN_POLL_INTERVAL_S}..{MAX_POLL_INTERVAL_S:g} s")
    if not (math.isfinite(c.timeout_s) and c.timeout_s > 0):
        conn_level.append(f"timeout_s {c.timeout_s} is not a usable timeout; set {MIN_TIMEOUT_S}..{MAX_TIMEOUT_S:g} s")
    if not 1 <= c.port <= 65535:
        conn_level.append(f"port {c.port} is not a TCP port (1..65535)")
    per_device: dict[str, str] = {}
    for d in c.devices:
        if d.profile not in profiles:
            per_device[d.device_id] = (f"unknown profile {d.profile!r}; known profiles: "
                                       f"{', '.join(sorted(profiles)) or '(none)'}")
        elif not 0 <= d.unit_id <= 255:
            per_device[d.device_id] = f"unit id {d.unit_id} does not fit Modbus's one-byte unit identifier (0..255)"
    return conn_level, per_device
