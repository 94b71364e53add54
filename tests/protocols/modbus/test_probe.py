"""The dry-run read (protocols/modbus/probe.py) against the real simulator: one verdict per device,
with the part of the configuration to check, within a time budget."""
from __future__ import annotations

from meterray.domain import DeviceSpec, FailureKind
from protocols.modbus.probe import probe
from protocols.modbus.profiles import PROFILES
from simulators.modbus_server import RunningSimulator
from tests.simulators.support import FakeClock, free_port_range

Sim = tuple[RunningSimulator, FakeClock]


async def test_each_device_gets_its_values_or_its_verdict(sim: Sim) -> None:
    running, _ = sim
    port = running.config.base_port
    meters = [d for d in running.devices if d.port == port]
    busy = meters[1]
    running.set_fault(busy.device_id, "exception", code=6)
    try:
        specs = [DeviceSpec(d.device_id, d.profile, d.unit_id) for d in meters[:2]] + \
            [DeviceSpec("nobody", "sdm630", 200), DeviceSpec("retired", "sdm120", 3)]
        reads = await probe("127.0.0.1", port, 0.4, specs, PROFILES)
    finally:
        running.set_fault(busy.device_id, "none")
    assert [r.device.device_id for r in reads] == [s.device_id for s in specs]
    ok, device_busy, no_unit, retired = reads
    assert ok.failure is None and {v.quantity for v in ok.values} == {f.quantity for f in
                                                                      PROFILES[meters[0].profile].fields}
    assert (device_busy.failure, device_busy.exception_code, device_busy.suspect) == (FailureKind.EXCEPTION_CODE, 6,
                                                                                      "device")
    assert (no_unit.failure, no_unit.exception_code, no_unit.suspect) == (FailureKind.EXCEPTION_CODE, 11, "unit_id")
    assert (retired.failure, retired.suspect) == (FailureKind.CONFIGURATION, "profile")


async def test_endpoint_failures_are_shared_and_silence_is_bounded(sim: Sim) -> None:
    running, _ = sim
    specs = [DeviceSpec(f"d{u}", "sdm630", u) for u in (1, 2)]
    refused = await probe("127.0.0.1", free_port_range(1), 0.4, specs, PROFILES)
    assert [(r.failure, r.suspect) for r in refused] == [(FailureKind.CONNECTION_REFUSED, "endpoint")] * 2
    unresolved = await probe("no-such-meter.invalid", 502, 0.4, specs, PROFILES)
    assert [(r.failure, r.suspect) for r in unresolved] == [(FailureKind.HOST_UNRESOLVED, "endpoint")] * 2

    port = running.config.base_port + 1
    silent = [d for d in running.devices if d.port == port]
    for d in silent:
        running.set_fault(d.device_id, "timeout")
    try:
        reads = await probe("127.0.0.1", port, 0.3, [DeviceSpec(d.device_id, d.profile, d.unit_id) for d in silent],
                            PROFILES, budget_s=0.5)
    finally:
        for d in silent:
            running.set_fault(d.device_id, "none")
    assert all(r.failure is FailureKind.TIMEOUT for r in reads)
    assert "no answer within 0.3" in reads[0].detail and reads[0].suspect == "unit_id"
    assert reads[-1].detail.startswith("not read: the dry run's 0.5 s were spent")
