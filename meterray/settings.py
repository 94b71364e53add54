"""Settings with embedded defaults, each overridable by a `METERRAY_<NAME>` environment variable.

Point meterray at existing servers instead of the local ones by setting, for example,
`METERRAY_PG_DSN`, `METERRAY_KAFKA_BOOTSTRAP` or `METERRAY_CLICKHOUSE_URL`.

One source of truth for the local services: their ports live here (`pg_port`, `kafka_port`,
`kafka_controller_port`, `mqtt_port`); when `METERRAY_PG_DSN` / `METERRAY_KAFKA_BOOTSTRAP` are not
set, the DSN and the bootstrap address are derived from them, and `scripts/services.sh` reads its
ports from `meterray settings --shell`, so moving a port moves the server and every client together.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "METERRAY_"
LOCAL_HOST = "127.0.0.1"  # the local services (scripts/services.sh) bind here only
# Signs access tokens when METERRAY_TOKEN_SIGNING_KEY is unset: development only. Anyone who reads this
# file can mint tokens with it, so it is reported loudly and refused with METERRAY_ENV=production.
DEVELOPMENT_SIGNING_KEY = "meterray-development-signing-key-NOT-SECRET-do-not-deploy"
MIN_SIGNING_KEY_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash output
# Ray's own resources: not custom resources meterray could ask for or a node could advertise for it.
RAY_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


class SettingsError(ValueError):
    pass


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    var_dir: Path = REPO_ROOT / "var"
    pg_port: int = Field(5432, ge=1, le=65535)  # the local PostgreSQL (scripts/services.sh)
    kafka_port: int = Field(9092, ge=1, le=65535)  # the local Kafka broker
    kafka_controller_port: int = Field(9093, ge=1, le=65535)  # its KRaft controller listener
    pg_dsn: str = ""  # empty: the local server, postgresql://meterray:meterray@127.0.0.1:<pg_port>/meterray
    kafka_bootstrap: str = ""  # empty: the local broker, 127.0.0.1:<kafka_port>
    kafka_topic_prefix: str = ""
    kafka_partitions: int = Field(4, ge=1, le=1024)
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(1883, ge=1, le=65535)
    # The analytics copy (storage/clickhouse): `chdb:///abs/path` is ClickHouse embedded in the ch-writer's
    # process (chDB), `http(s)://user:password@host:8123` a server; empty: chdb:// at <var_dir>/clickhouse.
    clickhouse_url: str = ""
    clickhouse_database: str = "meterray"
    # ClickHouse writers (actors/ch_writer.py); 0: no analytics copy. chDB allows one process per data
    # directory, so with chdb:// at most 1 (that writer also answers the aggregate queries).
    ch_writers: int = Field(1, ge=0, le=64)
    # A writer INSERTs at most this often (sooner when 5,000 readings are waiting): every INSERT makes a
    # part per table and rollup that ClickHouse merges later. At 50 readings/s, 0.5 s batches cost the
    # writer ~0.3 core and pushed the API's p99 past 100 ms (bench api, 2 cores).
    ch_batch_wait_s: float = Field(2.0, gt=0, le=60)
    # The writer's process yields the CPU to the API and the operational path (actors/priority.py): its
    # threads at this niceness (0: unchanged) and, with sched_idle, chDB's background merges only on a
    # core nothing else wants.
    ch_writer_niceness: int = Field(10, ge=0, le=19)
    ch_writer_sched_idle: bool = True
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    dashboard_port: int = Field(8265, ge=1, le=65535)
    metrics_port: int = Field(8090, ge=1, le=65535)  # Prometheus scrape port of the local Ray node
    ray_address: str = ""  # empty: start a local Ray instance
    ray_namespace: str = "meterray"
    ray_num_cpus: int = Field(2, ge=1)
    # A shard is one process (about 100 MB) with one event loop: it holds up to this many connections
    # and this much work. Measured here: about 0.4 ms of CPU per poll, so ~1,000 polls/s is half a core.
    connections_per_shard: int = Field(1000, ge=1)
    shard_max_polls_per_s: float = Field(1000.0, gt=0)
    reconcile_interval_s: float = Field(30.0, gt=0)  # the supervisor re-reads the connections this often too
    # The gap scan (actors/backfill.py) asks the sources that can resend data for the gaps in their devices'
    # half-hours this often, the first time shortly after start. A partner's gap is at least 90 minutes (3 ×
    # the expected half-hourly cadence), so scanning every 15 minutes asks within a sixth of that.
    backfill_scan_s: float = Field(900.0, ge=1.0, le=86_400.0)
    # Poll results a Modbus shard holds while Kafka does not take them, in MB of encoded records (Python's
    # own overhead adds ~15 %); past it the oldest are dropped (counted, logged). A meter's poll result is
    # ~750 bytes, so 64 MB ≈ 85,000 results ≈ 70 s of a full shard (250 connections × 5 meters) at 1 s,
    # 17 min at 15 s.
    shard_buffer_mb: float = Field(64.0, gt=0, le=4096)
    # Placement (README "Placement on a Ray cluster"): every ingestion actor (shards, device processors,
    # writers, partner actors) asks for this much of this custom resource, so Ray runs it only on nodes that
    # advertise it (`ray start --resources='{"ingestion": 1000}'`); every Serve replica asks for
    # `serve_resource`. A local Ray (meterray demo, tests) advertises both. Empty name: no constraint.
    ingestion_resource: str = "ingestion"
    ingestion_resource_per_actor: float = Field(1.0, gt=0)
    serve_resource: str = "serve"
    serve_resource_per_replica: float = Field(1.0, gt=0)
    # HTTP capacity of the monitoring API (serve_apps/capacity.py; measured by `meterray bench api`).
    # Two by default: one replica paused (a GC, a burst beside it on the cores) no longer holds every request
    # behind it (bench api at 200 requests/s, 2 cores: p99 19–22 ms with two, 22–134 ms with one).
    api_replicas: int = Field(2, ge=1, le=64)
    api_max_ongoing_requests: int = Field(8, ge=1, le=1000)  # per replica; also its PostgreSQL pool size
    api_max_queued_requests: int = Field(16, ge=1, le=100_000)  # per proxy; past it: 503 with Retry-After
    api_retry_after_s: int = Field(1, ge=0, le=3600)
    api_request_timeout_s: float = Field(15.0, gt=0, le=3600)  # end to end at the proxy: 408 past it
    # Who takes HTTP in front of the replicas: Serve's Python proxy, or HAProxy with each ingress replica
    # serving HTTP itself (Serve's direct ingress; serve_apps/capacity.py has the figures).
    api_ingress: Literal["proxy", "haproxy"] = "haproxy"
    # HAProxy's own stats and Prometheus pages; unset: the API port + 3 and + 4 (one runtime's, not another's)
    api_haproxy_stats_port: int | None = Field(None, ge=1, le=65535)
    api_haproxy_metrics_port: int | None = Field(None, ge=1, le=65535)
    device_processors: int = Field(1, ge=1)
    pg_writers: int = Field(1, ge=1)
    log_level: str = "INFO"
    # Encrypts partner secrets at rest (storage/secrets.py); empty: a random key in <var_dir>/secret.key.
    secret_key: SecretStr = SecretStr("")
    # development: missing API keys fall back to weaker checks (reported at start-up); production: refused.
    env: Literal["development", "production"] = "development"
    # Users service (serve_apps/users). api-fns: GET <fns_url>/egr?req=<INN>&key=<key> (external_apis.md §1).
    fns_url: str = "https://api-fns.ru/api"
    fns_api_key: SecretStr = SecretStr("")  # empty: INN checked by checksum only (development)
    # The supply-contract check facade (external_apis.md §2.4): GET <gkh_url>/api/v1/supply-contracts/check.
    # No public service exists; the endpoint is whatever the business connects. Empty key: contracts are
    # accepted and marked unverified (development).
    gkh_url: str = ""
    gkh_api_key: SecretStr = SecretStr("")
    external_timeout_s: float = Field(10.0, gt=0, le=120)
    # Definitive answers of api-fns and the contract check are reused this long (a retry, a second try
    # after fixing the password, does not spend the api-fns quota; public clients cache egr for 7 days).
    check_cache_ttl_s: int = Field(86_400, ge=0, le=30 * 86_400)
    token_signing_key: SecretStr = SecretStr("")  # HS256; empty: DEVELOPMENT_SIGNING_KEY (refused in production)
    access_token_ttl_s: int = Field(900, ge=30, le=3600)  # short-lived: verified locally, never looked up
    refresh_token_ttl_s: int = Field(30 * 86_400, ge=300, le=365 * 86_400)
    # Login throttling: failed attempts counted in a window, per account and per client address.
    login_window_s: int = Field(900, ge=1, le=86_400)
    login_max_failures_per_account: int = Field(5, ge=1)
    login_max_failures_per_address: int = Field(20, ge=1)
    # Comma-separated networks of reverse proxies (an ingress) whose X-Forwarded-For is believed for the
    # client address; empty: the peer's address is the client's.
    trusted_proxies: str = ""
    # The time zone of a device's half-hours and days when the device has none of its own (devices.devices
    # .timezone): an IANA name. Russia spans eleven zones (Europe/Kaliningrad .. Asia/Kamchatka).
    default_timezone: str = "Europe/Moscow"
    # `meterray demo` (meterray/app/demo_users.py): the demo organisation owning the simulated meters, its
    # admin, and a platform admin (no organisation: runtime, partners, every device), both with this password.
    demo_organisation_inn: str = "9900000000"  # valid check digit, no real organisation (region code 99)
    demo_organisation_name: str = "meterray demo"
    demo_admin_email: str = "demo@meterray.local"
    demo_platform_email: str = "platform@meterray.local"
    demo_password: SecretStr = SecretStr("meterray-demo")
    # History the demo backfills at start from the simulator's own model (meterray/app/demo_history.py):
    # every quantity for the last `demo_history_days` days, and the A+ register alone back to the local
    # midnight `demo_forecast_days` days ago, the whole days the forecasting model trains on (0: no training).
    demo_history_days: int = Field(3, ge=0, le=60)
    demo_forecast_days: int = Field(15, ge=0, le=60)
    # Notifications (actors/notifier.py, serve_apps/notifications). Unisender Go: POST <unisender_url>/email/send.json
    # (external_apis.md §3); the base URL follows the account's data centre (go1 or go2). Empty key: e-mails
    # are logged only (development; refused in production). The key also verifies the webhook's `auth`.
    unisender_url: str = "https://go1.unisender.ru/ru/transactional/api/v1"
    unisender_api_key: SecretStr = SecretStr("")
    notify_from_email: str = "noreply@meterray.local"
    notify_from_name: str = "meterray"
    notifiers: int = Field(1, ge=1)
    # Per device and kind at most one notification per this many seconds of event time; the rest counted.
    notify_throttle_s: int = Field(600, ge=0, le=7 * 86_400)
    # An event older than this when it arrives (a new consumer group reading old history) notifies nobody.
    notify_max_event_age_s: int = Field(3600, gt=0)
    # Outbox retries: exponential backoff from base to cap, then the e-mail is given up (status failed).
    notify_email_retry_base_s: float = Field(2.0, gt=0, le=3600)
    notify_email_retry_cap_s: float = Field(900.0, gt=0, le=86_400)
    notify_email_max_attempts: int = Field(12, ge=1, le=100)

    @model_validator(mode="before")
    @classmethod
    def _derive_local_addresses(cls, data: Any) -> Any:
        """An unset DSN / bootstrap points at the local services, on the ports set here."""
        if isinstance(data, dict):
            data = dict(data)
            if not data.get("pg_dsn"):
                port = data.get("pg_port", cls.model_fields["pg_port"].default)
                data["pg_dsn"] = f"postgresql://meterray:meterray@{LOCAL_HOST}:{port}/meterray"
            if not data.get("kafka_bootstrap"):
                port = data.get("kafka_port", cls.model_fields["kafka_port"].default)
                data["kafka_bootstrap"] = f"{LOCAL_HOST}:{port}"
        return data

    @model_validator(mode="after")
    def _distinct_kafka_ports(self) -> "Settings":
        if self.kafka_port == self.kafka_controller_port:
            raise ValueError(f"METERRAY_KAFKA_PORT and METERRAY_KAFKA_CONTROLLER_PORT are both {self.kafka_port}; "
                             "the broker and its controller need a port each")
        return self

    @model_validator(mode="after")
    def _auth_secrets(self) -> "Settings":
        key = self.token_signing_key.get_secret_value()
        if key and len(key.encode()) < MIN_SIGNING_KEY_BYTES:
            raise ValueError(f"METERRAY_TOKEN_SIGNING_KEY must be at least {MIN_SIGNING_KEY_BYTES} bytes "
                             "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)")
        if self.env == "production" and not key:
            raise ValueError("METERRAY_ENV=production needs METERRAY_TOKEN_SIGNING_KEY: the development default "
                             "is public, anyone could mint access tokens with it")
        if self.gkh_api_key.get_secret_value() and not self.gkh_url:
            raise ValueError("METERRAY_GKH_API_KEY is set but METERRAY_GKH_URL is empty: give the contract "
                             "check's endpoint")
        return self

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: str) -> str:
        import ipaddress

        for part in filter(None, (p.strip() for p in v.split(","))):
            try:
                ipaddress.ip_network(part)
            except ValueError:
                raise ValueError(f"{part!r} is not a network (e.g. 10.0.0.0/8, 127.0.0.1/32)") from None
        return v

    @property
    def signing_key(self) -> str:
        """The key that signs and verifies access tokens (the development default when unset)."""
        return self.token_signing_key.get_secret_value() or DEVELOPMENT_SIGNING_KEY

    @field_validator("default_timezone")
    @classmethod
    def _iana_zone(cls, v: str) -> str:
        from meterray.intervals import TimezoneError, zone

        try:
            zone(v)
        except TimezoneError as err:
            raise ValueError(str(err)) from None
        return v

    @field_validator("ingestion_resource", "serve_resource")
    @classmethod
    def _custom_resource(cls, v: str) -> str:
        if v in RAY_RESOURCES or v.startswith("node:") or not all(c.isalnum() or c in "_.-" for c in v):
            raise ValueError(f"{v!r} is not a custom resource name: letters, digits, '_', '.', '-', and none "
                             f"of Ray's own ({', '.join(RAY_RESOURCES)}, node:…); empty places actors anywhere")
        return v

    @model_validator(mode="after")
    def _clickhouse(self) -> "Settings":
        url = self.clickhouse_url
        if url and not url.startswith(("chdb:///", "http://", "https://")):
            raise ValueError("METERRAY_CLICKHOUSE_URL must be chdb:///absolute/path (embedded) or "
                             "http(s)://user:password@host:8123 (a server)")
        if not self.clickhouse_database.isidentifier():
            raise ValueError("METERRAY_CLICKHOUSE_DATABASE must be an identifier (letters, digits, _)")
        if self.clickhouse.startswith("chdb:") and self.ch_writers > 1:
            raise ValueError("METERRAY_CH_WRITERS > 1 needs a ClickHouse server: chDB (chdb://) is owned by "
                             "one process")
        return self

    @field_validator("pg_dsn")
    @classmethod
    def _postgres_dsn(cls, v: str) -> str:
        if not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL, e.g. postgresql://user:pass@host:5432/db")
        return v

    @property
    def clickhouse(self) -> str:
        return self.clickhouse_url or f"chdb://{(self.var_dir / 'clickhouse').resolve()}"

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
                f"{ENV_PREFIX}{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" if e["loc"] else e["msg"]
                for e in err.errors()
            )
            raise SettingsError(f"invalid settings: {problems}") from None

    def redacted(self) -> dict[str, Any]:
        """Settings safe to print or log: passwords in URLs are masked."""
        from urllib.parse import urlsplit, urlunsplit

        out = self.model_dump(mode="json")
        for name in ("pg_dsn", "clickhouse_url"):
            parts = urlsplit(getattr(self, name))
            if parts.password:
                netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
                out[name] = urlunsplit(parts._replace(netloc=netloc))
        for name, field in type(self).model_fields.items():  # every secret: "***" when set, "" when not
            if field.annotation is SecretStr:
                out[name] = "***" if getattr(self, name).get_secret_value() else ""
        return out

    def shell(self, names: list[str] | None = None) -> str:
        """`METERRAY_<NAME>=value` lines a shell can `eval` (scripts/services.sh reads its ports so);
        all settings, or only `names`; passwords masked."""
        shown = self.redacted()
        unknown = sorted(set(names or ()) - shown.keys())
        if unknown:
            raise SettingsError(f"no setting {', '.join(unknown)}; known: {', '.join(shown)}")
        return "".join(f"{ENV_PREFIX}{name.upper()}={shlex.quote(str(shown[name]))}\n" for name in names or shown)
