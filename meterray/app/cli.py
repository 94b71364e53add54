"""The `meterray` command: local services, migrations, simulators, the runtime, the demo and benchmarks."""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence

from meterray.settings import REPO_ROOT, Settings, SettingsError


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["simulate"]:  # every option belongs to the simulator's own parser
        from simulators.modbus_server import main as simulator_main

        return simulator_main(args_list[1:]) or 0
    parser = argparse.ArgumentParser(prog="meterray", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("services", help="local PostgreSQL, Kafka and Mosquitto: up | down | status")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("names", nargs="*", help="postgres, kafka, mosquitto (default: all)")

    p = sub.add_parser("migrate", help="apply PostgreSQL migrations and create the Kafka topics")
    p.add_argument("--no-topics", action="store_true",
                   help="PostgreSQL only: the topics are managed elsewhere (on Kubernetes: Strimzi KafkaTopics)")
    p = sub.add_parser("settings", help="print the effective settings (passwords masked)")
    p.add_argument("--shell", action="store_true", help="as METERRAY_<NAME>=value lines for `eval` in a shell")
    p.add_argument("names", nargs="*", help="only these settings (e.g. pg_port kafka_port)")

    p = sub.add_parser("register", help="register the meters of a simulator manifest as Modbus connections")
    p.add_argument("manifest", help="JSON manifest written by `meterray simulate --manifest`")
    p.add_argument("--interval", type=float, default=5.0, help="poll interval, seconds (default 5)")
    p.add_argument("--timeout", type=float, default=1.0, help="request timeout, seconds (default 1)")
    p.add_argument("--organisation", type=uuid.UUID, default=None,
                   help="id of the organisation owning the meters (auth.organisations); without it, meters "
                        "registered before keep their owner and new ones have none (platform staff only see them)")

    sub.add_parser("simulate", help="run simulated Modbus TCP meters (`meterray simulate --help`)")

    p = sub.add_parser("run", help="run the ingestion runtime and the API until Ctrl-C")

    p = sub.add_parser("demo", help="simulated meters + runtime + API, until Ctrl-C")
    p.add_argument("--meters", type=int, default=50)
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--history-days", type=_days, default=None, metavar="N",
                   help="days of every quantity backfilled at start from the simulator's model, every 5 min "
                        "(default METERRAY_DEMO_HISTORY_DAYS, 3; 0: none)")
    p.add_argument("--forecast-days", type=_days, default=None, metavar="N",
                   help="whole days of A+ history for the forecast model, trained at start (default "
                        "METERRAY_DEMO_FORECAST_DAYS, 15: the least the model trains on; 0: no training)")

    p = sub.add_parser("status", help="the runtime on one screen: actors, assignments, rates, consumer lag, "
                                      "restarts, devices per state (needs a running runtime)")
    p.add_argument("--watch", action="store_true", help="refresh every --interval seconds until Ctrl-C")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between samples (rates), default 2")
    p.add_argument("--json", action="store_true", help="the same view as GET /api/v1/runtime, as JSON")
    p = sub.add_parser("timezone", help="show or set the time zone of a device's half-hours and days")
    p.add_argument("device", help="device id")
    p.add_argument("zone", nargs="?", help="an IANA name such as Asia/Vladivostok; `default` for "
                                           "METERRAY_DEFAULT_TIMEZONE; omit to show the current one")
    sub.add_parser("backfill", help="publish a backfill request for each gap in the half-hours of devices whose "
                                    "source can resend data (topic backfill-requests)")

    p = sub.add_parser("bench", help="benchmarks; results go to bench/results/*.json")
    bench_sub = p.add_subparsers(dest="scenario", required=True)
    b = bench_sub.add_parser("modbus", help="poll N simulated meters: meterray runtime vs a plain pymodbus loop")
    b.add_argument("--meters", type=int, default=500)
    b.add_argument("--interval", type=float, default=1.0, help="poll interval, seconds (default 1)")
    b.add_argument("--seconds", type=float, default=None,
                   help="measured window, seconds (default 60; with --find-knee, per probe, default 20)")
    b.add_argument("--warmup", type=float, default=None,
                   help="warm-up before each measured window, seconds (default 10; with --find-knee 5)")
    b.add_argument("--units-per-port", type=int, default=5, help="meters behind each simulated TCP port")
    b.add_argument("--find-knee", action="store_true",
                   help="search, for the baseline and for meterray, the largest meter count that keeps "
                        ">= 95%% of its target polls/s (--meters is ignored); writes bench/results/modbus_knee.json")
    b.add_argument("--knee-start", type=int, default=1000, help="first probe, meters (default 1000)")
    b.add_argument("--knee-step", type=int, default=250,
                   help="resolution: stop when held and failed counts are this close (default 250)")
    b.add_argument("--knee-max", type=int, default=16000,
                   help="largest probe, meters; the simulator is sized for it (default 16000)")

    b = bench_sub.add_parser("partners", help="pages/s and records/s from the partner simulator: meterray vs a plain "
                                              "aiohttp → Kafka loop")
    b.add_argument("--devices", type=int, default=100, help="simulated meters (default 100)")
    b.add_argument("--paths", type=int, default=4, help="retrieval paths, each for its share of the meters")
    b.add_argument("--window", type=float, default=600.0, help="seconds of 1 s readings fetched (default 600)")
    b.add_argument("--page-size", type=int, default=1000, help="records per page (default 1000)")
    b = bench_sub.add_parser("clickhouse", help="aggregate latency over a year of 30-min data: ClickHouse rollups "
                                                "vs the same aggregate from the PostgreSQL archive; writes "
                                                "bench/results/clickhouse.json")
    b.add_argument("--devices", type=int, default=1000, help="meters (default 1000)")
    b.add_argument("--days", type=int, default=365, help="days of half-hourly readings (default 365)")
    b.add_argument("--repeats", type=int, default=5, help="timed runs of each query after a warm-up (default 5)")
    b = bench_sub.add_parser("mqtt", help="N devices publishing at QoS 1: meterray runtime vs a plain paho → Kafka "
                                          "subscriber; writes bench/results/mqtt.json")
    b.add_argument("--devices", type=int, default=1000)
    b.add_argument("--rate", type=float, default=2000.0, help="messages per second in total (default 2000)")
    b.add_argument("--seconds", type=float, default=30.0, help="publishing time per side (default 30)")
    b.add_argument("--subscribers", type=int, default=2, help="MQTT shards sharing the subscription (default 2)")
    b = bench_sub.add_parser("api", help="the monitoring API at a fixed offered rate (open loop) while meters stream, "
                                         "beside the same queries through asyncpg; writes bench/results/api.json")
    b.add_argument("--meters", type=int, default=50, help="simulated meters streaming meanwhile (default 50)")
    b.add_argument("--interval", type=float, default=1.0, help="their poll interval, seconds (default 1)")
    b.add_argument("--rate", type=float, default=200.0, help="offered requests/s per path (default 200)")
    b.add_argument("--seconds", type=float, default=60.0, help="measured window per path and side (default 60)")
    b.add_argument("--label", default="after", help="the run's name in api.json (default after; before: old code)")
    b.add_argument("--api-port", type=int, default=18400, help="the bench's own API port (default 18400)")
    b.add_argument("--ingress", choices=("proxy", "haproxy"), default=None,
                   help="Serve's Python proxy or HAProxy in front of the replicas (default: METERRAY_API_INGRESS)")
    b.add_argument("--no-search", action="store_true", help="skip the capacity search and the overload probe")
    b.add_argument("--start", type=float, default=25.0, help="capacity search: first rate, requests/s (default 25)")
    b.add_argument("--step", type=float, default=25.0, help="capacity search: requests/s per step (default 25)")
    b.add_argument("--top", type=float, default=1000.0, help="capacity search: highest rate tried (default 1000)")
    b.add_argument("--probe-seconds", type=float, default=10.0, help="capacity search: seconds a probe (default 10)")
    b.add_argument("--overload-rate", type=float, default=1000.0,
                   help="requests/s far past capacity: answered at once (200 or 503), then recovery (0: skip)")

    from meterray.app import forecast_cli

    forecast_cli.add_parser(sub)

    b = bench_sub.add_parser("forecast", help="train the global forecast model on N simulated meters x D days "
                                              "(a Ray task), then forecast API latency; bench/results/forecast.json")
    b.add_argument("--meters", type=int, default=1000)
    b.add_argument("--days", type=int, default=365)
    b.add_argument("--rounds", type=int, default=400, help="boosting rounds of the point model (quantiles: half)")
    b.add_argument("--api-devices", type=int, default=10, help="meters in the API latency database (0: skip)")
    b.add_argument("--requests", type=int, default=30, help="forecast requests timed")

    args = parser.parse_args(args_list)
    if args.command == "forecast":  # needs no settings: a CSV in, scores out
        return forecast_cli.run(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
    except SettingsError as err:
        print(err, file=sys.stderr)
        return 2
    return _COMMANDS[args.command](settings, args)


def _services(settings: Settings, args: argparse.Namespace) -> int:
    # services.sh asks this same interpreter for its ports (`meterray settings --shell`).
    env = {**os.environ, "METERRAY_PYTHON": sys.executable}
    return subprocess.call(["bash", str(REPO_ROOT / "scripts" / "services.sh"), args.action, *args.names], env=env)


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from meterray.app.runtime import migrate_database, prepare_stores

    if args.no_topics:
        print(f"migrations applied: {migrate_database(settings.pg_dsn) or 'none (up to date)'}")
        return 0
    done = prepare_stores(settings)
    print(f"migrations applied: {done['migrations'] or 'none (up to date)'}")
    print(f"topics created: {done['topics'] or 'none (all exist)'}")
    return 0


def _settings(settings: Settings, args: argparse.Namespace) -> int:
    if args.shell:
        try:
            print(settings.shell(args.names), end="")
        except SettingsError as err:
            print(err, file=sys.stderr)
            return 2
        return 0
    shown = settings.redacted()
    print(json.dumps({k: shown[k] for k in args.names} if args.names else shown, indent=2))
    return 0


def _register(settings: Settings, args: argparse.Namespace) -> int:
    from meterray.app.demo import register_manifest
    from meterray.config import ConfigError

    try:
        n = register_manifest(settings, args.manifest, args.interval, args.timeout, args.organisation)
    except ConfigError as err:
        print(f"nothing registered: {err}", file=sys.stderr)
        return 2
    print(f"registered {n} Modbus connections from {args.manifest}")
    return 0


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from meterray.app.demo import run_until_interrupted
    from meterray.auth_backends import BackendConfigError

    try:
        return run_until_interrupted(settings)
    except BackendConfigError as err:  # production with a development fallback: nothing was started
        print(f"not started: {err}", file=sys.stderr)
        return 2


def _days(text: str) -> int:
    n = int(text)
    if not 0 <= n <= 60:
        raise argparse.ArgumentTypeError(f"{n}: give 0 to 60 days")
    return n


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from meterray.app.demo import demo
    from meterray.auth_backends import BackendConfigError

    try:
        return demo(settings, args.meters, args.interval, args.history_days, args.forecast_days)
    except BackendConfigError as err:
        print(f"not started: {err}", file=sys.stderr)
        return 2


def _status(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    import ray

    from actors.supervisor import SUPERVISOR_NAME
    from meterray.app.runtime import init_ray
    from meterray.app.status import show

    if args.interval <= 0:
        print("meterray status: --interval must be positive", file=sys.stderr)
        return 2
    init_ray(settings.model_copy(update={"ray_address": settings.ray_address or "auto"}))
    try:
        supervisor = ray.get_actor(SUPERVISOR_NAME, namespace=settings.ray_namespace)
    except ValueError:
        print(f"no supervisor in Ray namespace {settings.ray_namespace!r}: is meterray running?", file=sys.stderr)
        return 1
    try:
        asyncio.run(show(settings, supervisor, args.watch, args.interval, args.json))
    except KeyboardInterrupt:
        pass
    return 0


def _timezone(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    import asyncpg

    from meterray.intervals import TimezoneError, zone
    from storage.postgres import consumption

    wanted = None if args.zone in (None, "default") else args.zone
    if wanted is not None:
        try:
            zone(wanted)
        except TimezoneError as err:
            print(f"nothing changed: {err}", file=sys.stderr)
            return 2

    async def run() -> str | None:
        conn = await asyncpg.connect(settings.pg_dsn)
        try:
            if args.zone is not None and not await consumption.set_device_timezone(conn, args.device, wanted):
                return None
            device = await consumption.metering(conn, args.device, organisation_id=None)  # the CLI is platform staff
            return None if device is None else device.timezone or f"{settings.default_timezone} (the default)"
        finally:
            await conn.close()

    shown = asyncio.run(run())
    if shown is None:
        print(f"no device {args.device!r}", file=sys.stderr)
        return 1
    print(f"{args.device}: {shown}")
    return 0


def _backfill(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from meterray.app.backfill import request_backfill

    for r in asyncio.run(request_backfill(settings)):
        print(f"{r.device_id} {r.quantity} {r.start} .. {r.end} ({r.half_hours} half-hours, {r.protocol})")
    return 0


def _bench(settings: Settings, args: argparse.Namespace) -> int:
    if args.scenario == "forecast":
        from bench.forecast_training import run_benchmark as run_forecast

        run_forecast(settings, args.meters, args.days, args.rounds, args.api_devices, args.requests)
        return 0
    if args.scenario == "partners":
        from bench.partners import run_benchmark as run_partners

        print(json.dumps(run_partners(settings, args.devices, args.paths, args.window, args.page_size), indent=2))
        return 0
    if args.scenario == "mqtt":
        return _bench_mqtt(settings, args)
    if args.scenario == "api":
        return _bench_api(settings, args)
    if args.scenario == "clickhouse":
        from bench.clickhouse import run_benchmark as run_clickhouse

        if args.devices < 1 or args.days < 2 or args.repeats < 1:
            print("meterray bench clickhouse: --devices ≥ 1, --days ≥ 2, --repeats ≥ 1", file=sys.stderr)
            return 2
        print(json.dumps(run_clickhouse(settings, args.devices, args.days, args.repeats), indent=2))
        return 0
    from bench.modbus import KneePlan, find_knee, run_benchmark

    if args.find_knee:
        try:
            plan = KneePlan(args.knee_start, args.knee_step, args.knee_max, granule=args.units_per_port)
        except ValueError as err:
            print(f"meterray bench modbus --find-knee: {err}", file=sys.stderr)
            return 2
        result = find_knee(settings, args.interval, args.seconds or 20.0, args.units_per_port, plan,
                           5.0 if args.warmup is None else args.warmup)
    else:
        result = run_benchmark(settings, args.meters, args.interval, args.seconds or 60.0, args.units_per_port,
                               10.0 if args.warmup is None else args.warmup)
    print(json.dumps(result, indent=2))
    return 0


def _bench_mqtt(settings: Settings, args: argparse.Namespace) -> int:
    from bench.mqtt import run_benchmark

    if args.devices < 1 or args.rate <= 0 or args.seconds <= 0 or not 1 <= args.subscribers <= 16:
        print("meterray bench mqtt: --devices, --rate and --seconds must be positive, --subscribers 1..16",
              file=sys.stderr)
        return 2
    print(json.dumps(run_benchmark(settings, args.devices, args.rate, args.seconds, args.subscribers), indent=2))
    return 0


def _bench_api(settings: Settings, args: argparse.Namespace) -> int:
    from bench.api import run_benchmark

    if min(args.meters, args.rate, args.seconds, args.start, args.step, args.probe_seconds) <= 0:
        print("meterray bench api: --meters, --rate, --seconds, --start, --step and --probe-seconds must be positive",
              file=sys.stderr)
        return 2
    if args.ingress:
        settings = settings.model_copy(update={"api_ingress": args.ingress})
    result = run_benchmark(settings, args.meters, args.interval, args.rate, args.seconds, args.label, args.api_port,
                           not args.no_search, args.start, args.step, args.top, args.probe_seconds,
                           0.0 if args.no_search else args.overload_rate)
    print(json.dumps(result, indent=2))
    return 0


_COMMANDS = {"services": _services, "migrate": _migrate, "settings": _settings, "register": _register,
             "run": _run, "demo": _demo, "status": _status, "bench": _bench, "backfill": _backfill,
             "timezone": _timezone}

if __name__ == "__main__":
    sys.exit(main())
