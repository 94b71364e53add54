"""The simulator process surface: device layout, manifest, HTTP control API, command line."""
from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from simulators.meter_model import Fault
from simulators.modbus_server import SimulatorConfig, parse_args, plan_devices, serve
from tests.simulators.support import free_port_range


def test_devices_round_robin_over_ports_and_units() -> None:
    devices = plan_devices(SimulatorConfig(base_port=15020, ports=2, units=3))
    assert [(d.device_id, d.port, d.unit_id) for d in devices] == [
        ("sdm630-15020-1", 15020, 1), ("wb-map3e-15020-2", 15020, 2), ("sdm630-15020-3", 15020, 3),
        ("wb-map3e-15021-1", 15021, 1), ("sdm630-15021-2", 15021, 2), ("wb-map3e-15021-3", 15021, 3),
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"profiles": ("sdm999",)}, "unknown profiles"), ({"units": 0}, "units"), ({"units": 248}, "units"),
     ({"base_port": 65535, "ports": 2}, "valid TCP ports"), ({"base_port": 1}, "control port")],
)
def test_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimulatorConfig(**kwargs)  # type: ignore[arg-type]


def test_command_line() -> None:
    config, level = parse_args(["--base-port", "16000", "--ports", "100", "--units", "5",
                                "--profiles", "wb-map3e", "--manifest", "/tmp/m.json", "--log-level", "debug"])
    assert (config.base_port, config.ports, config.units, config.profiles) == (16000, 100, 5, ("wb-map3e",))
    assert config.effective_control_port == 15999 and config.manifest == Path("/tmp/m.json") and level == "debug"
    with pytest.raises(SystemExit):
        parse_args(["--profiles", "nope"])


async def test_manifest_and_control_api(tmp_path: Path) -> None:
    manifest = tmp_path / "sim" / "manifest.json"
    base = free_port_range(2)
    sim = await serve(SimulatorConfig(base_port=base, ports=2, units=2, manifest=manifest))
    try:
        listed = json.loads(manifest.read_text())
        assert listed[0] == {"device_id": f"sdm630-{base}-1", "host": "127.0.0.1", "port": base,
                             "unit_id": 1, "profile": "sdm630"}
        assert len(listed) == 4
        assert sim.control_url == f"http://127.0.0.1:{base - 1}"
        async with aiohttp.ClientSession(sim.control_url) as http:
            async with http.get("/devices") as r:
                devices = await r.json()
            assert [d["fault"] for d in devices] == ["none"] * 4
            target = devices[1]["device_id"]
            async with http.post("/faults", json={"device_id": target, "fault": "exception", "code": 4}) as r:
                assert r.status == 200 and (await r.json())["fault"] == "exception"
            assert sim.meters[target].fault is Fault.EXCEPTION and sim.meters[target].exception_code == 4
            async with http.post("/faults", json={"device_id": "nope", "fault": "timeout"}) as r:
                assert r.status == 404
            async with http.post("/faults", json={"device_id": target, "fault": "melt"}) as r:
                assert r.status == 422
            async with http.post("/faults", json={"device_id": target, "fault": "exception", "code": 9}) as r:
                assert r.status == 422
            wb = devices[1]["device_id"]  # wb-map3e: only Urms L1..L3 have a "no value" pattern
            async with http.post("/faults", json={"device_id": wb, "fault": "no_value",
                                                  "quantities": ["1-0:52.7.0"]}) as r:
                assert r.status == 200 and (await r.json())["quantities"] == ["1-0:52.7.0"]
            async with http.get("/devices") as r:
                assert (await r.json())[1]["no_value"] == ["1-0:52.7.0"]
            async with http.post("/faults", json={"device_id": wb, "fault": "no_value",
                                                  "quantities": ["1-0:16.7.0"]}) as r:
                assert r.status == 422 and "no value" in (await r.json())["error"]  # P declares none
            async with http.post("/faults", json={"device_id": target, "fault": "reset"}) as r:
                assert (await r.json())["fault"] == "none"  # a reset is an event, not a state
            async with http.delete("/faults") as r:
                assert (await r.json()) == {"cleared": 4}
            assert all(m.fault is Fault.NONE for m in sim.meters.values())
    finally:
        await sim.stop()
        await sim.stop()


async def test_taken_port_fails_and_cleans_up() -> None:
    base = free_port_range(1)
    first = await serve(SimulatorConfig(base_port=base, control_port=0))
    try:
        with pytest.raises(RuntimeError):
            await serve(SimulatorConfig(base_port=base, control_port=0))
    finally:
        await first.stop()
