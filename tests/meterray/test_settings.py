import pytest

from meterray.settings import Settings, SettingsError


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
