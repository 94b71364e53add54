"""ModbusEndpoint against the real simulator: plausible readings and one typed error per fault."""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace

import pytest

from meterray.domain import FailureKind
from protocols.modbus.client import (
    ModbusBadResponseError,
    ModbusConnectError,
    ModbusConnectionLostError,
    ModbusEndpoint,
    ModbusError,
    ModbusExceptionCodeError,
    ModbusTimeoutError,
)
from protocols.modbus.planner import plan_blocks
from protocols.modbus.profiles import PROFILES, Profile
from simulators.modbus_server import DeviceInfo, RunningSimulator, SimulatorConfig, serve
from tests.simulators.support import FakeClock, free_port_range

Sim = tuple[RunningSimulator, FakeClock]
TIMEOUT_S = 0.4


def _device(sim: RunningSimulator, profile: str, port_index: int = 0, nth: int = 0) -> DeviceInfo:
    port = sim.config.base_port + port_index
    return [d for d in sim.devices if d.profile == profile and d.port == port][nth]


async def _read(d: DeviceInfo, endpoint: ModbusEndpoint) -> dict[str, float]:
    values, missing = await endpoint.read_device(PROFILES[d.profile], d.unit_id)
    assert missing == []
    return {v.quantity: v.value for v in values}


@pytest.mark.parametrize("profile", ["sdm630", "wb-map3e"])
async def test_reads_plausible_values_and_growing_energy(sim: Sim, profile: str) -> None:
    running, clock = sim
    d = _device(running, profile)
    async with ModbusEndpoint(d.host, d.port, TIMEOUT_S) as endpoint:
        first = await _read(d, endpoint)
        assert set(first) == {f.quantity for f in PROFILES[profile].fields}
        for q in ("1-0:32.7.0", "1-0:52.7.0", "1-0:72.7.0"):
            assert 200 <= first[q] <= 260
        assert 49.5 <= first["1-0:14.7.0"] <= 50.5
        assert 0.85 <= first["1-0:13.7.0"] <= 1.0
        assert 0 < first["1-0:16.7.0"] < 20_000  # a small business importing a few kW: positive signed power
        assert first["1-0:137.7.0"] >= abs(first["1-0:16.7.0"])  # |S| >= |P|
        clock.advance(900)  # a quarter of an hour later
        second = await _read(d, endpoint)
        assert second["1-0:1.8.0"] > first["1-0:1.8.0"]
        assert second["1-0:1.8.0"] - first["1-0:1.8.0"] < 20 * 0.25  # at most 20 kW for 15 min


async def test_units_behind_one_port_are_read_one_at_a_time(sim: Sim) -> None:
    running, _ = sim
    port = running.config.base_port + 1
    devices = [d for d in running.devices if d.port == port]
    async with ModbusEndpoint("127.0.0.1", port, TIMEOUT_S) as endpoint:
        results = await asyncio.gather(*(_read(d, endpoint) for d in devices))
    assert len(results) == len(devices) and all(r for r in results)


async def test_timeout_fault_times_out_and_endpoint_stays_usable(sim: Sim) -> None:
    running, _ = sim
    d = _device(running, "sdm630", nth=1)
    async with ModbusEndpoint(d.host, d.port, TIMEOUT_S) as endpoint:
        running.set_fault(d.device_id, "timeout")
        started = time.monotonic()
        with pytest.raises(ModbusTimeoutError) as info:
            await endpoint.read_device(PROFILES[d.profile], d.unit_id)
        elapsed = time.monotonic() - started
        assert info.value.kind is FailureKind.TIMEOUT and info.value.retriable
        # Our timeout, not pymodbus's own (3 s): the upper bound leaves room for a busy machine.
        assert TIMEOUT_S <= elapsed < TIMEOUT_S + 2.0
        running.set_fault(d.device_id, "none")
        assert await _read(d, endpoint)  # same connection, no reconnect needed
        await endpoint.connect()  # and a reconnect works too
        assert await _read(d, endpoint)


@pytest.mark.parametrize(("code", "meaning", "retriable"), [(2, "illegal data address", False),
                                                            (4, "server device failure", True)])
async def test_exception_fault_is_a_typed_exception_code(sim: Sim, code: int, meaning: str, retriable: bool) -> None:
    running, _ = sim
    d = _device(running, "wb-map3e", nth=1)
    async with ModbusEndpoint(d.host, d.port, TIMEOUT_S) as endpoint:
        running.set_fault(d.device_id, "exception", code)
        try:
            with pytest.raises(ModbusExceptionCodeError) as info:
                await endpoint.read_device(PROFILES[d.profile], d.unit_id)
        finally:
            running.set_fault(d.device_id, "none")
        err = info.value
        assert (err.kind, err.code, err.meaning) == (FailureKind.EXCEPTION_CODE, code, meaning)
        assert err.retriable is retriable
        assert await _read(d, endpoint)


async def test_drop_fault_loses_the_connection(sim: Sim) -> None:
    running, _ = sim
    d = _device(running, "sdm630", port_index=1)
    long_timeout_s = 5.0  # so "noticed at once" and "noticed at the timeout" stay apart on a busy machine
    endpoint = ModbusEndpoint(d.host, d.port, long_timeout_s)
    await endpoint.connect()
    running.set_fault(d.device_id, "drop")
    try:
        started = time.monotonic()
        with pytest.raises(ModbusConnectionLostError) as info:
            await endpoint.read_device(PROFILES[d.profile], d.unit_id)
        assert time.monotonic() - started < long_timeout_s / 2  # noticed at once, not at the timeout
        assert info.value.kind is FailureKind.CONNECTION_LOST
        with pytest.raises(ModbusError) as again:
            await endpoint.read_device(PROFILES[d.profile], d.unit_id)
        assert again.value.kind in (FailureKind.CONNECTION_LOST, FailureKind.CONNECTION_REFUSED)
        assert not endpoint.connected
    finally:
        running.set_fault(d.device_id, "none")
    await endpoint.connect()
    assert await _read(d, endpoint)
    await endpoint.close()
    await endpoint.close()  # safe twice


async def test_garbage_fault_is_a_bad_response_carrying_the_raw_words(sim: Sim) -> None:
    running, _ = sim
    for profile in ("sdm630", "wb-map3e"):
        d = _device(running, profile, port_index=1, nth=1 if profile == "sdm630" else 0)
        async with ModbusEndpoint(d.host, d.port, TIMEOUT_S) as endpoint:
            running.set_fault(d.device_id, "garbage")
            try:
                with pytest.raises(ModbusBadResponseError) as info:
                    await endpoint.read_device(PROFILES[profile], d.unit_id)
            finally:
                running.set_fault(d.device_id, "none")
            assert await _read(d, endpoint)  # the same connection reads fine once the meter does
        first = plan_blocks(PROFILES[profile])[0]
        assert info.value.kind is FailureKind.BAD_RESPONSE
        assert info.value.raw_words is not None
        assert len(info.value.raw_words) == first.count + 1  # one register too many, kept for the dead letters
        assert f"answer holds {first.count + 1} registers" in str(info.value)


@pytest.mark.parametrize(("profile", "quantities", "expected_missing"), [
    ("wb-map3e", None, {"1-0:32.7.0", "1-0:52.7.0", "1-0:72.7.0"}),  # the only fields with an error value
    ("wb-map3e", ["1-0:52.7.0"], {"1-0:52.7.0"}),
    ("sdm630", ["1-0:14.7.0", "1-0:36.7.0"], {"1-0:14.7.0", "1-0:36.7.0"}),  # NaN floats
])
async def test_no_value_fault_leaves_only_those_quantities_out(
        sim: Sim, profile: str, quantities: list[str] | None, expected_missing: set[str]) -> None:
    running, _ = sim
    d = _device(running, profile, port_index=1, nth=1 if profile == "sdm630" else 0)
    async with ModbusEndpoint(d.host, d.port, TIMEOUT_S) as endpoint:
        running.set_fault(d.device_id, "no_value", quantities=quantities)
        try:
            values, missing = await endpoint.read_device(PROFILES[profile], d.unit_id)
        finally:
            running.set_fault(d.device_id, "none")
    assert {m.quantity for m in missing} == expected_missing
    assert {v.quantity for v in values} == {f.quantity for f in PROFILES[profile].fields} - expected_missing
    assert all(math.isfinite(v.value) for v in values)


@pytest.mark.parametrize(("meter", "read_as", "code"), [
    ("wb-map3e", "sdm630", 3),  # 80 registers from 0x0000: over the WB-MAP3E's 60 (and not its map)
    ("sdm630", "wb-map3e", 2),  # 0x10BC: no register of an SDM630
    ("wb-map3e", "wb-map3e-fw1", 2),  # the legacy Urms at 0x10D9: not in the fw2 map
    ("wb-map3e-fw1", "wb-map3e", 2),  # fw2's "Total PF" at 0x10BC: not in the legacy map
])
async def test_a_wrong_profile_fails_visibly(meter: str, read_as: str, code: int) -> None:
    base = free_port_range(1)
    running = await serve(SimulatorConfig(base_port=base, profiles=(meter,), control_port=0))
    try:
        async with ModbusEndpoint("127.0.0.1", base, TIMEOUT_S) as endpoint:
            with pytest.raises(ModbusExceptionCodeError) as info:
                await endpoint.read_device(PROFILES[read_as], 1)
            assert (info.value.code, info.value.kind, info.value.retriable) == (code, FailureKind.EXCEPTION_CODE, False)
            values, missing = await endpoint.read_device(PROFILES[meter], 1)  # the right profile reads it
            assert missing == [] and len(values) == len(PROFILES[meter].fields)
    finally:
        await running.stop()


async def test_an_off_by_one_register_map_fails_visibly(sim: Sim) -> None:
    # The Eastron numbering trap: 30001-style numbers taken as addresses, one register late. The
    # meter refuses reads that start inside a float (v1.8 §3.11) instead of answering shifted words.
    running, _ = sim
    d = _device(running, "sdm630")
    sdm = PROFILES["sdm630"]
    shifted = Profile("sdm630-shifted", 4, "big", 80, tuple(replace(f, address=f.address + 1) for f in sdm.fields[:-1]))
    async with ModbusEndpoint(d.host, d.port, TIMEOUT_S) as endpoint:
        with pytest.raises(ModbusExceptionCodeError) as info:
            await endpoint.read_device(shifted, d.unit_id)
    assert info.value.code == 2


async def test_requests_over_the_limit_or_off_the_map_are_refused(sim: Sim) -> None:
    running, _ = sim
    d = _device(running, "sdm630")
    async with ModbusEndpoint(d.host, d.port, TIMEOUT_S) as endpoint:
        assert len(await endpoint.read_registers(d.unit_id, 4, 0, 80)) == 80  # the SDM630's limit
        with pytest.raises(ModbusExceptionCodeError) as over:
            await endpoint.read_registers(d.unit_id, 4, 0, 82)
        with pytest.raises(ModbusExceptionCodeError) as off:
            await endpoint.read_registers(d.unit_id, 4, 0x0050, 2)
    assert (over.value.code, off.value.code) == (3, 2)
    assert "illegal data value" in str(over.value) and "illegal data address" in str(off.value)


async def test_reset_fault_makes_the_counter_go_down(sim: Sim) -> None:
    running, clock = sim
    d = _device(running, "wb-map3e", port_index=1, nth=1)
    async with ModbusEndpoint(d.host, d.port, TIMEOUT_S) as endpoint:
        before = (await _read(d, endpoint))["1-0:1.8.0"]
        running.set_fault(d.device_id, "reset")
        after = (await _read(d, endpoint))["1-0:1.8.0"]
        assert before > 100 and 0 <= after < 1  # a new meter starts from zero
        clock.advance(3600)
        later = (await _read(d, endpoint))["1-0:1.8.0"]
        assert after < later < before  # and counts up again from there


async def test_unknown_unit_is_a_gateway_exception(sim: Sim) -> None:
    running, _ = sim
    async with ModbusEndpoint("127.0.0.1", running.config.base_port, TIMEOUT_S) as endpoint:
        with pytest.raises(ModbusExceptionCodeError) as info:
            await endpoint.read_registers(99, 4, 0, 2)
    assert info.value.code == 11 and info.value.retriable


async def test_wrong_function_code_is_illegal_function(sim: Sim) -> None:
    running, _ = sim
    d = _device(running, "sdm630")
    async with ModbusEndpoint(d.host, d.port, TIMEOUT_S) as endpoint:
        with pytest.raises(ModbusExceptionCodeError) as info:
            await endpoint.read_registers(d.unit_id, 3, 0, 2)
    assert info.value.code == 1 and not info.value.retriable


async def test_closed_port_is_connection_refused() -> None:
    port = free_port_range(1)
    endpoint = ModbusEndpoint("127.0.0.1", port, TIMEOUT_S)
    with pytest.raises(ModbusConnectError) as info:
        await endpoint.connect()
    assert info.value.kind is FailureKind.CONNECTION_REFUSED and info.value.retriable
    with pytest.raises(ModbusConnectionLostError):  # never connected: refuse to send
        await endpoint.read_registers(1, 4, 0, 2)
    await endpoint.close()


async def test_bad_arguments_are_value_errors() -> None:
    endpoint = ModbusEndpoint("127.0.0.1", 1, TIMEOUT_S)
    for args in ((1, 4, 0, 0), (1, 4, 0, 126), (1, 4, 0xFFFF, 2), (1, 6, 0, 1), (256, 4, 0, 1)):
        with pytest.raises(ValueError):
            await endpoint.read_registers(*args)
    with pytest.raises(ValueError):
        ModbusEndpoint("127.0.0.1", 1, 0)


async def test_reads_under_uvloop_as_in_a_ray_actor(sim: Sim) -> None:
    """Ray runs async actors on uvloop, whose transports are not asyncio's classes: read through one."""
    import uvloop

    running, _ = sim
    d = _device(running, "wb-map3e")

    async def read_once() -> dict[str, float]:
        async with ModbusEndpoint(d.host, d.port, TIMEOUT_S) as endpoint:
            return await _read(d, endpoint)

    values = await asyncio.to_thread(uvloop.run, read_once())
    assert set(values) == {f.quantity for f in PROFILES["wb-map3e"].fields}
