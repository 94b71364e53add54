"""The Russian production calendar against the decrees' lists."""
from __future__ import annotations

from datetime import date

from meterray.forecasting.calendar import Day, covered, day_kind, non_working


def test_2025_transfers_decree_1335() -> None:
    assert day_kind(date(2025, 5, 2)) is Day.BRIDGE  # from Saturday 4 January
    assert day_kind(date(2025, 5, 8)) is Day.BRIDGE  # from Sunday 23 February
    assert day_kind(date(2025, 6, 13)) is Day.BRIDGE  # from Saturday 8 March
    assert day_kind(date(2025, 11, 3)) is Day.BRIDGE  # from Saturday 1 November
    assert day_kind(date(2025, 11, 1)) is Day.WORKING_WEEKEND
    assert day_kind(date(2025, 12, 31)) is Day.BRIDGE
    assert not non_working(date(2025, 2, 24))  # 23 February's day off went to May, not to Monday


def test_2026_transfers_decree_1466() -> None:
    assert [d for d in range(1, 13) if non_working(date(2026, 1, d))] == list(range(1, 12))
    assert non_working(date(2026, 3, 9)) and non_working(date(2026, 5, 11))
    assert day_kind(date(2026, 11, 4)) is Day.HOLIDAY and not non_working(date(2026, 11, 5))


def test_year_without_a_decree_applies_article_112_alone() -> None:
    assert not covered(2030)
    # 9 May 2030 is a Thursday; 12 June 2032 is a Saturday -> Monday 14 June.
    assert day_kind(date(2030, 5, 9)) is Day.HOLIDAY
    assert day_kind(date(2032, 6, 14)) is Day.BRIDGE and day_kind(date(2032, 6, 15)) is Day.WORKING
