"""`meterray forecast backtest` on a CSV: the JSON it writes, extra columns, and bad input refused."""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from meterray.app.cli import main
from meterray.forecasting.calendar import non_working
from tests.meterray.forecasting.synthetic import load


def _csv(path: Path, days: int = 35) -> Path:
    s = load(days, temperature=True)
    start = datetime(s.first.year, s.first.month, s.first.day)
    with path.open("w") as fh:
        fh.write("timestamp,value,temp_c,working_day\n")
        for i, (v, t) in enumerate(zip(s.values, s.temperature, strict=True)):  # type: ignore[arg-type]
            ts = start + timedelta(minutes=30 * i)
            fh.write(f"{ts.isoformat()},{v:.4f},{t:.2f},{0 if non_working(ts.date()) else 1}\n")
    return path


def test_backtest_writes_the_documented_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scores.json"
    code = main(["forecast", "backtest", "--csv", str(_csv(tmp_path / "load.csv")), "--horizon", "48",
                 "--test-days", "3", "--temperature-column", "temp_c", "--feature-column", "working_day",
                 "--out", str(out)])
    assert code == 0
    body = json.loads(out.read_text())
    assert list(body) == ["horizon", "test_days", "model", "seasonal_naive_daily", "seasonal_naive_weekly"]
    assert body["horizon"] == 48 and body["test_days"] == 3
    assert all(set(body[k]) == {"mase", "mape", "mae"} and np.isfinite(list(body[k].values())).all()
               for k in ("model", "seasonal_naive_daily", "seasonal_naive_weekly"))
    printed = capsys.readouterr().out
    assert "ex-post" in printed and "working_day" in printed and "lightgbm" in printed


def test_missing_column_and_off_grid_rows_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = _csv(tmp_path / "load.csv")
    assert main(["forecast", "backtest", "--csv", str(csv), "--test-days", "3", "--temperature-column", "t"]) == 2
    assert "no column 't'" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,value\n2025-09-01T00:00:00,1\n2025-09-01T00:10:00,2\n")
    assert main(["forecast", "backtest", "--csv", str(bad), "--test-days", "1"]) == 2
    assert "not on the half-hour grid" in capsys.readouterr().err
