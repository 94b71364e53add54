import os
import subprocess
import sys
from pathlib import Path

import pytest

from meterray.settings import REPO_ROOT, Settings, SettingsError


def test_defaults_match_the_readme() -> None:
    s = Settings.from_env({})
    assert s.pg_dsn == "postgresql://meterray:meterray@127.0.0.1:5432/meterray"
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert (s.mqtt_host, s.mqtt_port) == ("127.0.0.1", 1883)
    assert s.clickhouse.startswith("chdb://") and s.clickhouse.endswith("var/clickhouse")


def test_environment_overrides_defaults() -> None:
    s = Settings.from_env({"METERRAY_KAFKA_BOOTSTRAP": "kafka-0:9092", "METERRAY_KAFKA_PARTITIONS": "12"})
    assert s.kafka_bootstrap == "kafka-0:9092" and s.kafka_partitions == 12


def test_bad_values_name_the_variable_to_fix() -> None:
    with pytest.raises(SettingsError, match="METERRAY_KAFKA_PARTITIONS"):
        Settings.from_env({"METERRAY_KAFKA_PARTITIONS": "lots"})
    with pytest.raises(SettingsError, match="METERRAY_PG_DSN: .*postgresql://"):
        Settings.from_env({"METERRAY_PG_DSN": "mysql://x"})


def test_redacted_hides_the_password() -> None:
    shown = Settings.from_env({"METERRAY_PG_DSN": "postgresql://u:s3cret@db:5432/m"}).redacted()
    assert "s3cret" not in str(shown) and shown["pg_dsn"] == "postgresql://u:***@db:5432/m"


def test_one_port_setting_moves_the_server_and_the_client_together() -> None:
    s = Settings.from_env({"METERRAY_PG_PORT": "5999", "METERRAY_KAFKA_PORT": "19092"})
    assert s.pg_dsn == "postgresql://meterray:meterray@127.0.0.1:5999/meterray"
    assert s.kafka_bootstrap == "127.0.0.1:19092"
    # An explicit DSN / bootstrap (an existing server) wins over the local port.
    s = Settings.from_env({"METERRAY_PG_PORT": "5999", "METERRAY_PG_DSN": "postgresql://u:p@db:6432/m",
                           "METERRAY_KAFKA_BOOTSTRAP": "kafka-0:9092"})
    assert (s.pg_dsn, s.kafka_bootstrap) == ("postgresql://u:p@db:6432/m", "kafka-0:9092")


def test_impossible_ports_are_refused_with_the_variable_to_fix() -> None:
    with pytest.raises(SettingsError, match="METERRAY_PG_PORT"):
        Settings.from_env({"METERRAY_PG_PORT": "70000"})
    with pytest.raises(SettingsError, match="METERRAY_KAFKA_PORT and METERRAY_KAFKA_CONTROLLER_PORT"):
        Settings.from_env({"METERRAY_KAFKA_CONTROLLER_PORT": "9092"})


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO_ROOT), **env}
    return subprocess.run([sys.executable, "-m", "meterray.app.cli", *args], env=full, capture_output=True,
                          text=True, timeout=60, cwd=REPO_ROOT)


def test_settings_shell_output_evaluates_to_the_same_values() -> None:
    out = _cli({"METERRAY_PG_PORT": "6543", "METERRAY_PG_DSN": ""}, "settings", "--shell")
    assert out.returncode == 0, out.stderr
    shown = subprocess.run(["bash", "-c", out.stdout + 'echo "$METERRAY_PG_PORT|$METERRAY_PG_DSN"'],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert shown == "6543|postgresql://meterray:***@127.0.0.1:6543/meterray"  # the password never shows
    bad = _cli({}, "settings", "--shell", "pg_prot")
    assert bad.returncode == 2 and "pg_prot" in bad.stderr and "pg_port" in bad.stderr


def test_services_script_takes_its_ports_from_the_settings(tmp_path: Path) -> None:
    # `status` only looks at ports and at pid files: nothing is started or stopped here. An empty
    # state directory, so services this checkout started for the test run are not ours here.
    env = {"PATH": os.environ["PATH"], "METERRAY_PYTHON": sys.executable, "METERRAY_VAR_DIR": str(tmp_path),
           "METERRAY_PG_PORT": "1",
           "METERRAY_KAFKA_PORT": "2", "METERRAY_KAFKA_CONTROLLER_PORT": "3", "METERRAY_MQTT_PORT": "4"}
    out = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "services.sh"), "status"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert [line.split()[:2] for line in out.stdout.splitlines()] == [
        ["postgres", "stopped"], ["kafka", "stopped"], ["mosquitto", "stopped"]]
    bad = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "services.sh"), "status"],
                         env={**env, "METERRAY_MQTT_PORT": "0"}, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "METERRAY_MQTT_PORT" in bad.stderr


def test_clickhouse_url_is_an_absolute_chdb_directory_or_a_server_and_chdb_has_one_writer() -> None:
    s = Settings.from_env({"METERRAY_VAR_DIR": "var"})
    assert s.clickhouse.startswith("chdb:///"), "a relative directory would be read as chdb://<host>/<database>"
    with pytest.raises(SettingsError, match="METERRAY_CLICKHOUSE_URL must be chdb:///absolute"):
        Settings.from_env({"METERRAY_CLICKHOUSE_URL": "chdb://var/clickhouse"})
    with pytest.raises(SettingsError, match="METERRAY_CH_WRITERS > 1 needs a ClickHouse server"):
        Settings.from_env({"METERRAY_CH_WRITERS": "2"})
    server = Settings.from_env({"METERRAY_CLICKHOUSE_URL": "http://meterray:secret@ch:8123",
                                "METERRAY_CH_WRITERS": "2"})
    assert server.ch_writers == 2 and server.redacted()["clickhouse_url"] == "http://meterray:***@ch:8123"
