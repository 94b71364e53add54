"""The aggregate API's default range for calendar intervals: today in every device's calendar, whatever
the hour in UTC (at 22:30 UTC it is already tomorrow in Moscow, and a day's readings are stamped with
their local date)."""
from __future__ import annotations

from datetime import date, datetime, timezone

import pytest
from fastapi import HTTPException

from serve_apps.monitoring.aggregates import _range

LATE_EVENING_UTC = datetime(2026, 11, 26, 22, 30, tzinfo=timezone.utc)  # 01:30 on the 27th in Moscow


def test_the_default_daily_range_includes_today_in_moscow_late_in_the_utc_evening() -> None:
    lo, hi = _range("1d", None, None, now=LATE_EVENING_UTC)
    assert lo == date(2025, 11, 25)  # 366 days back, by the UTC date
    assert isinstance(hi, date) and hi > date(2026, 11, 27)  # exclusive: Moscow's 27 November is in


def test_the_default_monthly_range_includes_this_month_everywhere_on_new_years_eve() -> None:
    lo, hi = _range("1mo", None, None, now=datetime(2026, 12, 31, 22, 0, tzinfo=timezone.utc))
    assert lo == date(2023, 12, 1)
    assert hi == date(2027, 2, 1)  # January 2027 has begun in Moscow


def test_an_explicit_end_is_the_callers_calendar() -> None:
    lo, hi = _range("1d", datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 11, 27, tzinfo=timezone.utc),
                    now=LATE_EVENING_UTC)
    assert (lo, hi) == (date(2026, 11, 1), date(2026, 11, 27))  # midnight `to`: that day is out
    with pytest.raises(HTTPException) as err:
        _range("1d", datetime(2026, 11, 27, tzinfo=timezone.utc), datetime(2026, 11, 1, tzinfo=timezone.utc))
    assert err.value.status_code == 422
