"""`meterray run` and `meterray demo`: start everything, say where it is, stop cleanly on Ctrl-C."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import UUID

import asyncpg

from meterray.auth_backends import BackendConfigError
from meterray.config import ConfigError, validate_connections
from meterray.domain import ModbusConnection
from meterray.settings import Settings

SIM_PREFIX = "sim-"
DEMO_BASE_PORT = 15020


def manifest_connections(manifest: list[dict], interval_s: float, timeout_s: float,
                         prefix: str = SIM_PREFIX) -> list[ModbusConnection]:
    """Group a simulator manifest's meters by endpoint: one connection per TCP port.

    Checked against the profiles this code knows (meterray.config): raises ConfigError naming every
    problem (unknown profile and the known ones, reserved unit id, interval/timeout out of bounds).
    """
    from protocols.modbus.profiles import PROFILES

    by_endpoint: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for m in manifest:
        by_endpoint[(m["host"], int(m["port"]))].append(
            {"device_id": m["device_id"], "profile": m["profile"], "unit_id": m["unit_id"]})
    return validate_connections(
        [{"connection_id": f"{prefix}{host}:{port}", "host": host, "port": port, "poll_interval_s": interval_s,
          "timeout_s": timeout_s, "devices": devs} for (host, port), devs in sorted(by_endpoint.items())],
        PROFILES.keys())


async def _register(settings: Settings, connections: list[ModbusConnection],
                    organisation_id: UUID | None = None) -> None:
    from storage.postgres.auth_users import organisation_exists
    from storage.postgres.devices import replace_modbus_connections

    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        if organisation_id is not None and not await organisation_exists(conn, organisation_id):
            raise ConfigError([f"no organisation {organisation_id} (auth.organisations)"])
        # Simulated meters of an earlier run that this manifest no longer has are removed.
        await replace_modbus_connections(conn, connections, SIM_PREFIX, organisation_id)
    finally:
        await conn.close()


def register_manifest(settings: Settings, path: str | Path, interval_s: float, timeout_s: float,
                      organisation_id: UUID | None = None) -> int:
    """`organisation_id`: the organisation owning the meters (None: an owner already stored stays)."""
    connections = manifest_connections(json.loads(Path(path).read_text()), interval_s, timeout_s)
    asyncio.run(_register(settings, connections, organisation_id))
    return len(connections)


def start_simulator(settings: Settings, meters: int, units_per_port: int, base_port: int,
                    manifest: Path) -> subprocess.Popen[bytes]:
    """The Modbus simulator as its own process (its CPU is not meterray's), ready when the manifest exists."""
    ports = -(-meters // units_per_port)
    manifest.unlink(missing_ok=True)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    log = open(settings.var_dir / "log" / "simulator.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.modbus_server", "--host", "127.0.0.1", "--base-port", str(base_port),
         "--ports", str(ports), "--units", str(units_per_port), "--profiles", "sdm630,wb-map3e",
         "--manifest", str(manifest), "--control-port", str(base_port - 1)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not manifest.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            lines = Path(log.name).read_text(errors="replace").strip().splitlines()
            raise RuntimeError(f"the Modbus simulator did not start ({lines[-1] if lines else 'no output'}); "
                               f"see {log.name}")
        time.sleep(0.2)
    return proc


async def _reporting(settings: Settings) -> tuple[int, int]:
    from storage.postgres.readings import count_reporting_devices

    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        return await count_reporting_devices(conn, datetime.now(timezone.utc) - timedelta(minutes=1))
    finally:
        await conn.close()


def _wait_for_interrupt(settings: Settings, show_progress: bool, started: float) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    all_in = False
    while not stop.wait(2.0):
        if show_progress and not all_in:
            reporting, total = asyncio.run(_reporting(settings))
            all_in = total > 0 and reporting == total
            print(f"  {reporting}/{total} meters have current readings ({time.monotonic() - started:.0f} s since start)"
                  + ("  — all in" if all_in else ""), flush=True)


def _print_urls(settings: Settings, api: str, logins: str = "") -> None:
    from meterray.auth_backends import auth_backends
    from meterray.notify import email_backend, email_warnings

    print(f"\nmeterray is running\n  web cabinet:    {api}/ (sign up at {api}/signup; meters nobody owns are seen by"
          f" platform staff only)\n  API:            {api}/api/v1/devices (every API needs an access token)\n"
          f"  OpenAPI docs:   {api}/docs\n"
          f"  users:          {api}/api/v1/auth/docs (register, token, refresh, logout), {api}/api/v1/me, "
          f"{api}/api/v1/users (admins)\n" + logins +
          f"  health:         {api}/healthz\n  Ray dashboard:  http://127.0.0.1:{settings.dashboard_port}\n"
          f"  Prometheus:     http://127.0.0.1:{settings.metrics_port}/metrics (ray_meterray_* series)\n"
          + f"  notifications:  {api}/api/v1/notifications (bearer; OpenAPI at {api}/api/v1/notifications/docs)\n"
          + "".join(f"  DEVELOPMENT FALLBACK: {w}\n"
                    for w in auth_backends(settings).warnings() + email_warnings(email_backend(settings)))
          + "Press Ctrl-C to stop.\n", flush=True)


def run_until_interrupted(settings: Settings, show_progress: bool = True, started: float | None = None,
                          logins: Callable[[str], str] | None = None, ready: Callable[[], None] | None = None) -> int:
    """`logins(api)`: lines telling how to log in, printed with the URLs (the demo's accounts); `ready()`: run
    once the runtime and the API are up, before the URLs are printed (the demo's history and training)."""
    from meterray.app.runtime import init_ray, prepare_stores, start_api, start_ingestion, stop_all
    from meterray.auth_backends import auth_backends
    from meterray.notify import email_backend

    started = time.monotonic() if started is None else started
    auth_backends(settings)  # METERRAY_ENV=production: refused before anything starts (BackendConfigError)
    email_backend(settings)  # the same for a missing Unisender key
    prepare_stores(settings)
    init_ray(settings)
    try:
        start_ingestion(settings)
        api = start_api(settings)
        if ready is not None:
            ready()
        _print_urls(settings, api, logins(api) if logins else "")
        _wait_for_interrupt(settings, show_progress, started)
    finally:
        print("stopping meterray …", flush=True)
        stop_all(settings)
    return 0


DEMO_MQTT_CONNECTION = "demo-mqtt"


async def _register_demo_mqtt(settings: Settings) -> None:
    from meterray.mqtt_config import MqttConnection
    from storage.postgres.mqtt import save_mqtt_connections

    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        await save_mqtt_connections(conn, [MqttConnection(
            DEMO_MQTT_CONNECTION, settings.mqtt_host, settings.mqtt_port, "meterray/v1/+/readings",
            auto_register=True)])
    finally:
        await conn.close()


def register_demo_mqtt(settings: Settings) -> str:
    """The demo's MQTT connection: meterray's own format on the local Mosquitto, unknown devices registered."""
    asyncio.run(_register_demo_mqtt(settings))
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return (f"MQTT: meterray/v1/+/readings on {settings.mqtt_host}:{settings.mqtt_port}, new devices registered "
            f"automatically; try\n  mosquitto_pub -h {settings.mqtt_host} -p {settings.mqtt_port} -q 1 "
            f"-t meterray/v1/my-meter-1/readings -m '{{\"ts\": \"{now}\", \"values\": "
            f"{{\"1-0:1.8.0\": 1234.5, \"1-0:16.7.0\": 850, \"1-0:32.7.0\": 231.2}}}}'\n"
            f"  (\"ts\" may also be epoch milliseconds) and look for my-meter-1 in /api/v1/devices")


def demo(settings: Settings, meters: int, interval_s: float, history_days: int | None = None,
         forecast_days: int | None = None) -> int:
    """`history_days`, `forecast_days`: the history backfilled at start (meterray/app/demo_history.py);
    None: the settings' (METERRAY_DEMO_HISTORY_DAYS, METERRAY_DEMO_FORECAST_DAYS), 0: none."""
    from meterray.app.demo_history import DemoHistory, meters_of
    from meterray.app.demo_users import ensure_demo_identity, login_help
    from meterray.app.runtime import prepare_stores

    if settings.env == "production":  # its accounts have a printed password; production never gets them
        raise BackendConfigError("METERRAY_ENV=production: the demo (public demo accounts) is for development only")
    started = time.monotonic()
    (settings.var_dir / "log").mkdir(parents=True, exist_ok=True)
    prepare_stores(settings)
    manifest = settings.var_dir / "demo" / "manifest.json"
    sim = start_simulator(settings, meters, 5, DEMO_BASE_PORT, manifest)
    partner_sim = None
    try:
        identity = ensure_demo_identity(settings)
        n = register_manifest(settings, manifest, interval_s, min(1.0, interval_s / 2), identity.organisation_id)
        print(f"simulator: {meters} meters on {n} Modbus TCP ports from 127.0.0.1:{DEMO_BASE_PORT}, "
              f"fault control on http://127.0.0.1:{DEMO_BASE_PORT - 1}/devices", flush=True)
        from meterray.app.demo_partners import PARTNER_SIM_PORT, start_demo_partners

        partner_sim = start_demo_partners(settings)
        print(f"partners: acme (JSON, OAuth2, cursor) and volta (CSV, API key, pages; device status) from the "
              f"partner simulator on http://127.0.0.1:{PARTNER_SIM_PORT}; see /api/v1/partners", flush=True)
        mqtt_help = register_demo_mqtt(settings)
        days = settings.demo_history_days if history_days is None else history_days
        fdays = settings.demo_forecast_days if forecast_days is None else forecast_days
        backfill = DemoHistory(settings, meters_of(json.loads(manifest.read_text())), days, fdays,
                               progress=lambda line: print(line, flush=True))
        if days or fdays:  # before the pollers start: Kafka keeps each meter's history ahead of its live polls
            backfill.produce()
        # The URLs, the logins and the MQTT example come last, together, once the history is in.
        return run_until_interrupted(settings, started=started,
                                     logins=lambda api: login_help(settings, identity, api) + f"  {mqtt_help}\n",
                                     ready=backfill.land_and_train)
    finally:
        os.killpg(sim.pid, signal.SIGTERM)
        sim.wait(timeout=10)
        if partner_sim is not None:
            os.killpg(partner_sim.pid, signal.SIGTERM)
            partner_sim.wait(timeout=10)
