"""Settings with embedded defaults, each overridable by a `METERRAY_<NAME>` environment variable.

Point meterray at existing servers instead of the local ones by setting, for example,
`METERRAY_PG_DSN`, `METERRAY_KAFKA_BOOTSTRAP` or `METERRAY_CLICKHOUSE_URL`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "METERRAY_"


class SettingsError(ValueError):
    pass


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    var_dir: Path = REPO_ROOT / "var"
    pg_dsn: str = "postgresql://meterray:meterray@127.0.0.1:5432/meterray"
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_topic_prefix: str = ""
    kafka_partitions: int = Field(4, ge=1, le=1024)
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(1883, ge=1, le=65535)
    clickhouse_url: str = ""  # empty: chdb:// under var_dir
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    dashboard_port: int = Field(8265, ge=1, le=65535)
    metrics_port: int = Field(8090, ge=1, le=65535)  # Prometheus scrape port of the local Ray node
    ray_address: str = ""  # empty: start a local Ray instance
    ray_namespace: str = "meterray"
    ray_num_cpus: int = Field(2, ge=1)
    connections_per_shard: int = Field(250, ge=1)
    # Poll results a Modbus shard holds while Kafka does not take them, in MB of encoded records (Python's
    # own overhead adds ~15 %); past it the oldest are dropped (counted, logged). A meter's poll result is
    # ~750 bytes, so 64 MB ≈ 85,000 results ≈ 70 s of a full shard (250 connections × 5 meters) at 1 s,
    # 17 min at 15 s.
    shard_buffer_mb: float = Field(64.0, gt=0, le=4096)
    device_processors: int = Field(1, ge=1)
    pg_writers: int = Field(1, ge=1)
    log_level: str = "INFO"

    @field_validator("pg_dsn")
    @classmethod
    def _postgres_dsn(cls, v: str) -> str:
        if not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL, e.g. postgresql://user:pass@host:5432/db")
        return v

    @property
    def clickhouse(self) -> str:
        return self.clickhouse_url or f"chdb://{self.var_dir / 'clickhouse'}"

    def topic(self, name: str) -> str:
        return f"{self.kafka_topic_prefix}{name}"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> "Settings":
        """Defaults, then `METERRAY_*` variables, then explicit overrides; errors name the variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            key = ENV_PREFIX + name.upper()
            if key in env:
                values[name] = env[key]
        values.update(overrides)
        try:
            return cls(**values)
        except ValidationError as err:
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in err.errors()
            )
            raise SettingsError(f"invalid settings: {problems}") from None

    def redacted(self) -> dict[str, Any]:
        """Settings safe to print or log: passwords in URLs are masked."""
        from urllib.parse import urlsplit, urlunsplit

        out = self.model_dump(mode="json")
        parts = urlsplit(self.pg_dsn)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            out["pg_dsn"] = urlunsplit(parts._replace(netloc=netloc))
        return out
