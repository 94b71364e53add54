"""`meterray forecast ...`: the day-ahead backtest on any half-hourly CSV, and a simulated meter's series as CSV."""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from datetime import date, datetime
from pathlib import Path

from meterray.forecasting import backtest
from meterray.forecasting.calendar import day_kind, weekends_only
from meterray.forecasting.features import Series
from meterray.forecasting.grid import GridError, on_grid


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("forecast", help="day-ahead forecasting: backtest on a CSV, simulated series")
    fsub = p.add_subparsers(dest="forecast_command", required=True)
    b = fsub.add_parser("backtest", help="rolling-origin day-ahead backtest of the forecasting model on a CSV with "
                                         "header timestamp,value[,temperature][,other known-in-advance columns]")
    b.add_argument("--csv", required=True, help="half-hourly rows: timestamp (ISO 8601, local clock), value, ...")
    b.add_argument("--horizon", type=int, default=48, help="half-hours ahead from midnight (48: day-ahead)")
    b.add_argument("--test-days", type=int, required=True, help="the last D days are the test set")
    b.add_argument("--temperature-column", help="°C column, used as observed (ex-post)")
    b.add_argument("--feature-column", action="append", default=[], metavar="NAME",
                   help="a known-in-advance numeric column (e.g. a working-day flag); repeatable")
    b.add_argument("--calendar", choices=["ru", "none"], default="ru",
                   help="day kinds from the Russian production calendar (default) or Saturday/Sunday only "
                        "(for series from elsewhere)")
    b.add_argument("--out", help="write the scores as JSON here")
    t = fsub.add_parser("train", help="train the global model on every device (a Ray task) and register it")
    t.add_argument("--days", type=int, default=365, help="history read per device, local days (default 365)")
    t.add_argument("--device", action="append", dest="devices", help="only these devices (repeatable)")
    t.add_argument("--every", type=float, help="keep training every N seconds (a detached scheduler actor)")
    s = fsub.add_parser("simulate-csv", help="a simulated meter's half-hourly kWh as a backtest CSV")
    s.add_argument("--device", default="sim-0001")
    s.add_argument("--start", type=date.fromisoformat, default=date(2025, 1, 1), help="first local day (Moscow)")
    s.add_argument("--days", type=int, default=365)
    s.add_argument("--out", required=True)


def run(args: argparse.Namespace) -> int:
    if args.forecast_command == "simulate-csv":
        return _simulate_csv(args)
    if args.forecast_command == "train":
        return _train(args)
    try:
        series = read_csv(Path(args.csv), args.temperature_column, args.feature_column)
        result = backtest.run(series, args.test_days, args.horizon,
                              day_kind if args.calendar == "ru" else weekends_only)
    except (OSError, GridError, ValueError) as err:
        print(f"meterray forecast backtest: {err}", file=sys.stderr)
        return 2
    print(table(result, series, args))
    if args.out:
        Path(args.out).write_text(json.dumps(result.as_json(), indent=2) + "\n")
        print(f"written: {args.out}")
    return 0


def read_csv(path: Path, temperature: str | None, features: list[str]) -> Series:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        for col in ("timestamp", "value", *([temperature] if temperature else []), *features):
            if col not in header:
                raise ValueError(f"{path}: no column {col!r} (header: {', '.join(header)})")
        ts: list[datetime] = []
        cols: dict[str, list[float]] = {c: [] for c in ("value", *([temperature] if temperature else []), *features)}
        for n, row in enumerate(reader, start=2):
            try:
                ts.append(datetime.fromisoformat(row["timestamp"]))
                for c, out in cols.items():
                    out.append(_number(row[c]))
            except ValueError as err:
                raise ValueError(f"{path} line {n}: {err}") from None
    return on_grid(ts, cols["value"], cols[temperature] if temperature else None, {f: cols[f] for f in features})


def _number(text: str | None) -> float:
    """A number, or NaN for an empty cell (a missing value)."""
    return float(text) if text not in (None, "", "NA", "nan") else math.nan


def table(r: backtest.Backtest, series: Series, args: argparse.Namespace) -> str:
    train_days = series.days - r.test_days
    lines = [
        f"day-ahead backtest: {series.first} .. {series.day(series.days - 1)}, {train_days} days before the test "
        f"set, last {r.test_days} days tested ({r.points} half-hours), model refitted at each midnight",
        f"temperature: {'ex-post (observed values of the forecast day)' if args.temperature_column else 'none'}; "
        f"calendar: {args.calendar}; extra columns: {', '.join(args.feature_column) or 'none'}",
        f"MASE scale (in-sample MAE of the weekly naive, lag 336): {r.scale:.4g}",
        "",
        f"{'method':<24}{'MASE':>8}{'MAPE %':>9}{'MAE':>12}",
    ]
    for name, s in (("lightgbm", r.model), ("seasonal naive daily", r.seasonal_naive_daily),
                    ("seasonal naive weekly", r.seasonal_naive_weekly)):
        lines.append(f"{name:<24}{s.mase:>8.3f}{s.mape:>9.2f}{s.mae:>12.4g}")
    if r.fallback_days:
        lines.append(f"({r.fallback_days} test days had too little history for a model: weekly naive used)")
    return "\n".join(lines)


def _simulate_csv(args: argparse.Namespace) -> int:
    from simulators.load_series import half_hour_energy, timestamps

    values = half_hour_energy(args.device, args.start, args.days)
    with open(args.out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "value"])
        for t, v in zip(timestamps(args.start, args.days), values, strict=True):
            w.writerow([t.isoformat(), f"{v:.6f}"])
    print(f"written: {args.out} ({len(values)} half-hours of {args.device})")
    return 0


def _train(args: argparse.Namespace) -> int:
    import ray

    from actors.forecast_training import ForecastScheduler, train_model
    from meterray.app.runtime import init_ray
    from meterray.settings import Settings, SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError as err:
        print(err, file=sys.stderr)
        return 2
    init_ray(settings, dashboard=False)
    if args.every:
        scheduler = ForecastScheduler.options(  # type: ignore[attr-defined]
            name="forecast-scheduler", namespace=settings.ray_namespace, lifetime="detached",
            get_if_exists=True).remote(settings, args.every, args.days)
        ray.get(scheduler.start.remote())
        print(f"forecast-scheduler: training every {args.every:g} s (detached actor in {settings.ray_namespace!r})")
        return 0
    summary = ray.get(train_model.remote(settings, args.days, args.devices))
    print(json.dumps(summary, indent=2, default=str))
    return 0
