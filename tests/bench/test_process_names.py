"""The modbus bench reports CPU per process under one name per actor, whatever method it was running."""
from __future__ import annotations

from bench.modbus import process_name


def test_an_actor_is_named_by_its_class_busy_or_not() -> None:
    assert process_name(["ray::ModbusShard.ping"]) == "ModbusShard"
    assert process_name(["ray::ModbusShard"]) == "ModbusShard"
    assert process_name(["ray::DeviceProcessor.start", "", ""]) == "DeviceProcessor"


def test_other_processes_keep_their_name() -> None:
    assert process_name(["/usr/bin/python3", "-m", "ray._private.workers.default_worker", "--x"]) == "idle worker"
    assert process_name(["/work/main/.venv/bin/python", "bench.py"]) == "/work/main/.venv/bin/python"
