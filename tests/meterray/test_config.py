"""The configuration edge (meterray.config): what `meterray register` and storage refuse, and how they say it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meterray.config import ConfigError, connection_problems, validate_connections
from meterray.domain import DeviceSpec, ModbusConnection
from meterray.settings import REPO_ROOT

PROFILES = {"sdm630", "wb-map3e"}


def _conn(**kw: object) -> dict:
    base = {"connection_id": "gw-1", "host": "10.0.0.5", "port": 502, "poll_interval_s": 5.0, "timeout_s": 1.0,
            "devices": [{"device_id": "m-1", "profile": "sdm630", "unit_id": 1},
                        {"device_id": "m-2", "profile": "wb-map3e", "unit_id": 2}]}
    return {**base, **kw}


def _problems(*items: dict) -> list[str]:
    with pytest.raises(ConfigError) as err:
        validate_connections(items, PROFILES)
    return err.value.problems


def test_a_good_connection_becomes_the_domain_type() -> None:
    [c] = validate_connections([_conn()], PROFILES)
    assert c == ModbusConnection("gw-1", "10.0.0.5", 502, 5.0, 1.0,
                                 (DeviceSpec("m-1", "sdm630", 1), DeviceSpec("m-2", "wb-map3e", 2)))


def test_unknown_profile_names_the_known_ones() -> None:
    [p] = _problems(_conn(devices=[{"device_id": "m-1", "profile": "sdm360", "unit_id": 1}]))
    assert p == "connection 'gw-1': devices[0].profile: unknown profile 'sdm360'; known profiles: sdm630, wb-map3e"


@pytest.mark.parametrize("unit", [248, 250, 254, 256, -1])
def test_reserved_or_impossible_unit_ids_are_refused(unit: int) -> None:
    [p] = _problems(_conn(devices=[{"device_id": "m-1", "profile": "sdm630", "unit_id": unit}]))
    assert p.startswith("connection 'gw-1': devices[0].unit_id: "), p
    assert ("reserved by the Modbus spec" in p) == (248 <= unit <= 254), p


@pytest.mark.parametrize("unit", [0, 255])
def test_unit_0_and_255_only_for_a_single_direct_tcp_meter(unit: int) -> None:
    direct = _conn(devices=[{"device_id": "m-1", "profile": "sdm630", "unit_id": unit}])
    assert validate_connections([direct], PROFILES)[0].devices[0].unit_id == unit
    behind_gateway = _conn(devices=[{"device_id": "m-1", "profile": "sdm630", "unit_id": unit},
                                    {"device_id": "m-2", "profile": "sdm630", "unit_id": 3}])
    [p] = _problems(behind_gateway)
    assert "gateway use 1..247" in p


@pytest.mark.parametrize(("change", "needle"), [
    ({"port": 0}, "port: Input should be greater than or equal to 1"),
    ({"port": 70000}, "port: Input should be less than or equal to 65535"),
    ({"poll_interval_s": 0.01}, "poll_interval_s: Input should be greater than or equal to 0.1"),
    ({"poll_interval_s": 10**6}, "poll_interval_s: Input should be less than or equal to 86400"),
    ({"poll_interval_s": float("nan")}, "poll_interval_s: Input should be a finite number"),
    ({"timeout_s": 0}, "timeout_s: Input should be greater than or equal to 0.05"),
    ({"timeout_s": 5.0}, "timeout_s 5.0 must be shorter than poll_interval_s 5.0"),
    ({"host": "bad host!"}, "neither an IP address nor a valid host name"),
    ({"host": ""}, "neither an IP address nor a valid host name"),
    ({"devices": []}, "devices: a connection needs at least one device"),
    ({"connection_id": "has space"}, "connection_id: String should match pattern"),
])
def test_impossible_connection_values_are_refused_with_the_field_to_fix(change: dict, needle: str) -> None:
    problems = _problems(_conn(**change))
    assert any(needle in p for p in problems), problems


def test_every_problem_is_reported_at_once_and_device_ids_are_unique_across_connections() -> None:
    problems = _problems(_conn(port=0, timeout_s=0),
                         _conn(connection_id="gw-2", devices=[{"device_id": "m-1", "profile": "sdm630",
                                                               "unit_id": 9}]),
                         _conn(connection_id="gw-3"))
    assert [p.split(":")[0] for p in problems] == ["connection 'gw-1'", "connection 'gw-1'", "connection 'gw-3'"]
    assert "device 'm-1' is already on connection 'gw-2'" in problems[2]


def test_duplicate_unit_ids_on_one_gateway_are_refused() -> None:
    [p] = _problems(_conn(devices=[{"device_id": "m-1", "profile": "sdm630", "unit_id": 4},
                                   {"device_id": "m-2", "profile": "sdm630", "unit_id": 4}]))
    assert "unit id(s) [4] used by more than one device" in p


def test_stored_connection_problems_are_split_per_device() -> None:
    c = ModbusConnection("gw", "10.0.0.5", 502, 5.0, 1.0,
                         (DeviceSpec("ok", "sdm630", 1), DeviceSpec("gone", "retired-profile", 2)))
    assert connection_problems(c, PROFILES) == ([], {"gone": "unknown profile 'retired-profile'; "
                                                             "known profiles: sdm630, wb-map3e"})
    bad_interval = ModbusConnection("gw", "10.0.0.5", 502, 0.0001, 0.00005, (DeviceSpec("ok", "sdm630", 1),))
    conn_level, per_device = connection_problems(bad_interval, PROFILES)
    assert per_device == {} and [p.split()[0] for p in conn_level] == ["poll_interval_s"]
    # Unwise but workable rows stored before the edge rules keep polling: an upgrade stops nothing.
    legacy = ModbusConnection("old gw", "10.0.0.5", 502, 1.0, 1.0, (DeviceSpec("a", "sdm630", 250),
                                                                     DeviceSpec("b", "sdm630", 0)))
    assert connection_problems(legacy, PROFILES) == ([], {})


def test_register_command_refuses_a_bad_manifest_before_storing_anything(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([
        {"device_id": "m-1", "host": "127.0.0.1", "port": 15020, "unit_id": 1, "profile": "sdm360"},
        {"device_id": "m-2", "host": "127.0.0.1", "port": 15020, "unit_id": 250, "profile": "sdm630"},
    ]))
    # A DSN nobody answers on: the refusal must come before any connection to PostgreSQL.
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO_ROOT), "METERRAY_PG_PORT": "1"}
    out = subprocess.run([sys.executable, "-m", "meterray.app.cli", "register", str(manifest), "--interval", "0.01"],
                         env=env, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("nothing registered: invalid Modbus configuration:")
    assert "unknown profile 'sdm360'; known profiles: " in out.stderr and "sdm630" in out.stderr
    assert "unit id 250 is reserved" in out.stderr
    assert "poll_interval_s: Input should be greater than or equal to 0.1" in out.stderr
