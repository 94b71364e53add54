"""Read each device of a connection once, as a poll would, and say plainly what went wrong: the
dry run of `/api/v1/connections` (nothing is sent anywhere, nothing stored).

The same client and planner as the shards (ModbusEndpoint.read_device: the profile's blocks, one
request at a time); what it adds is the verdict a person needs before saving a meter: which part
of the configuration is suspect (`unit_id`, `profile`, `endpoint`, `device`) and what to check.
"""
from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from meterray.domain import DeviceSpec, FailureKind, Value

from .client import ModbusEndpoint, ModbusError, ModbusExceptionCodeError
from .codec import NoValue
from .profiles import Profile

# Modbus application protocol v1.1b3 §7: 0x0A "gateway path unavailable" and 0x0B "gateway target
# device failed to respond" are a gateway's answers for a unit id nothing answers at.
_NO_SUCH_UNIT = frozenset({10, 11})
# 0x01 illegal function, 0x02 illegal data address, 0x03 illegal data value: the request does not fit
# the device — for a meter that answers, the profile (another model or firmware) is the usual cause.
_WRONG_REQUEST = frozenset({1, 2, 3})


@dataclass(frozen=True, slots=True)
class DeviceProbe:
    """One device read once: its values (and the quantities it has no value for), or why not."""

    device: DeviceSpec
    elapsed_ms: float
    values: tuple[Value, ...] = ()
    no_value: tuple[NoValue, ...] = ()
    failure: FailureKind | None = None
    detail: str = ""
    exception_code: int | None = None
    suspect: str | None = None  # unit_id | profile | endpoint | device
    hint: str = ""


async def probe(host: str, port: int, timeout_s: float, devices: Sequence[DeviceSpec],
                profiles: Mapping[str, Profile], budget_s: float = 60.0) -> list[DeviceProbe]:
    """Every device of one endpoint read once, in order; never raises for what the wire does.

    A person waits for the answer: once `budget_s` is spent (a gateway of silent meters costs a
    timeout each), the devices not read yet are reported as not read instead of read.
    """
    started = time.perf_counter()
    try:
        await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as err:
        detail = f"host {host!r} does not resolve ({getattr(err, 'strerror', None) or err})"
        return [_failed(d, started, FailureKind.HOST_UNRESOLVED, detail, "endpoint",
                        "check the host name (or give the meter's IP address)") for d in devices]
    endpoint = ModbusEndpoint(host, port, timeout_s)
    out: list[DeviceProbe] = []
    try:
        for i, d in enumerate(devices):
            t0 = time.perf_counter()
            if t0 - started > budget_s:
                out += [_failed(x, t0, FailureKind.TIMEOUT, f"not read: the dry run's {budget_s:g} s were spent on "
                                "the devices before it", "device", "try the remaining devices in a dry run of their "
                                "own (a config listing them)") for x in devices[i:]]
                break
            profile = profiles.get(d.profile)
            if profile is None:  # stored before the profile left the code: nothing can decode it
                out.append(_failed(d, t0, FailureKind.CONFIGURATION, f"unknown profile {d.profile!r}", "profile",
                                   f"known profiles: {', '.join(sorted(profiles))}"))
                continue
            if not endpoint.connected:
                try:
                    await endpoint.connect()
                except ModbusError as err:  # as in a poll: every device behind the endpoint shares it
                    out += [_verdict(x, t0, err, host, port, timeout_s) for x in devices[i:]]
                    break
            try:
                values, missing = await endpoint.read_device(profile, d.unit_id)
            except ModbusError as err:
                out.append(_verdict(d, t0, err, host, port, timeout_s))
                continue
            out.append(DeviceProbe(d, _ms(t0), tuple(values), tuple(missing)))
    finally:
        await endpoint.close()
    return out


def _verdict(d: DeviceSpec, t0: float, err: ModbusError, host: str, port: int, timeout_s: float) -> DeviceProbe:
    kind, detail = err.kind, str(err)
    if isinstance(err, ModbusExceptionCodeError):
        code = err.code
        if code in _NO_SUCH_UNIT:
            return _failed(d, t0, kind, detail, "unit_id", f"the gateway at {host}:{port} has no device answering at "
                           f"unit id {d.unit_id} (exception {code}: {err.meaning}): check the meter's Modbus address "
                           "and its wiring to the gateway", code)
        if code in _WRONG_REQUEST:
            return _failed(d, t0, kind, detail, "profile", f"the device answers but refuses the registers of profile "
                           f"{d.profile!r} (exception {code}: {err.meaning}): check the meter's model and firmware "
                           "against the profile", code)
        return _failed(d, t0, kind, detail, "device", f"the device reports {err.meaning} (exception {code}): "
                       "try again later", code)
    if kind is FailureKind.CONNECTION_REFUSED:
        return _failed(d, t0, kind, detail, "endpoint", f"nothing accepts Modbus TCP connections at {host}:{port}: "
                       "check the host, the port (502 is Modbus's) and any firewall")
    if kind is FailureKind.CONNECTION_LOST:
        return _failed(d, t0, kind, detail, "endpoint", f"{host}:{port} closed the connection: check that it speaks "
                       "Modbus TCP and accepts another client")
    if kind is FailureKind.TIMEOUT:
        return _failed(d, t0, kind, detail, "unit_id", f"no answer within {timeout_s} s: a meter reached directly "
                       f"stays silent for a unit id that is not its own (is {d.unit_id} right?); otherwise the timeout "
                       "is too short for this link")
    if "answer from unit" in detail:
        return _failed(d, t0, kind, detail, "unit_id", f"another unit answered than {d.unit_id}: check the unit id")
    return _failed(d, t0, kind, detail, "profile", f"the answer does not decode with profile {d.profile!r}: check "
                   "the meter's model and firmware against the profile")


def _failed(d: DeviceSpec, t0: float, kind: FailureKind, detail: str, suspect: str, hint: str,
            code: int | None = None) -> DeviceProbe:
    return DeviceProbe(d, _ms(t0), failure=kind, detail=detail, exception_code=code, suspect=suspect, hint=hint)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)
