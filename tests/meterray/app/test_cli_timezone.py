"""`meterray timezone`: a device's zone is checked at the edge and stored; `default` falls back to the setting."""
from __future__ import annotations

import pytest

from meterray.app.cli import main
from meterray.settings import Settings
from tests.pipeline.helpers import sql


def test_device_time_zone_is_set_checked_and_reset(database: Settings, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("METERRAY_PG_DSN", database.pg_dsn)  # the command reads its settings from the environment
    monkeypatch.setenv("METERRAY_DEFAULT_TIMEZONE", "Asia/Yekaterinburg")
    sql(database.pg_dsn, "INSERT INTO devices.devices (id, name, protocol, profile, unit_id)"
                         " VALUES ('cli-tz', 'cli-tz', 'modbus_tcp', 'sdm630', 1) ON CONFLICT DO NOTHING")
    stored = "SELECT timezone FROM devices.devices WHERE id = 'cli-tz'"
    assert main(["timezone", "cli-tz"]) == 0
    assert capsys.readouterr().out == "cli-tz: Asia/Yekaterinburg (the default)\n"
    assert main(["timezone", "cli-tz", "Asia/Kamchatka"]) == 0
    assert capsys.readouterr().out == "cli-tz: Asia/Kamchatka\n"
    assert sql(database.pg_dsn, stored)[0]["timezone"] == "Asia/Kamchatka"
    assert main(["timezone", "cli-tz", "Kamchatka"]) == 2
    assert "unknown time zone 'Kamchatka'" in capsys.readouterr().err
    assert sql(database.pg_dsn, stored)[0]["timezone"] == "Asia/Kamchatka"  # unchanged
    assert main(["timezone", "no-such-device", "Europe/Moscow"]) == 1
    assert "no device 'no-such-device'" in capsys.readouterr().err
    assert main(["timezone", "cli-tz", "default"]) == 0
    assert sql(database.pg_dsn, stored)[0]["timezone"] is None
