"""The Russian production calendar: which days are non-working, with the Government's transfers.

Non-working holidays are fixed by the Labour Code, art. 112 (ТК РФ от 30.12.2001 № 197-ФЗ, ст. 112):
1-6 and 8 January (New Year holidays), 7 January, 23 February, 8 March, 1 May, 9 May, 12 June,
4 November. A holiday on a weekend moves to the next working day, except the January ones, whose two
days the Government moves by decree; it may move other days off too, to make bridges (art. 112 p. 5).
The transfers below are the decrees' own lists:
- 2025: Постановление Правительства РФ от 04.10.2024 № 1335 «О переносе выходных дней в 2025 году»:
  4 Jan (Sat) -> 2 May (Fri), 5 Jan (Sun) -> 31 Dec (Wed), 23 Feb (Sun) -> 8 May (Thu),
  8 Mar (Sat) -> 13 Jun (Fri), 1 Nov (Sat, a working Saturday) -> 3 Nov (Mon).
- 2026: Постановление Правительства РФ от 24.09.2025 № 1466 «О переносе выходных дней в 2026 году»:
  3 Jan (Sat) -> 9 Jan (Fri), 4 Jan (Sun) -> 31 Dec (Thu); by art. 112 itself 8 Mar (Sun) -> 9 Mar (Mon)
  and 9 May (Sat) -> 11 May (Mon).
Years without a decree here get the statutory holidays and the art. 112 weekend rule only
(`covered()` says which years are exact).
"""
from __future__ import annotations

from datetime import date, timedelta
from enum import IntEnum
from functools import cache

# (month, day) of the non-working holidays, Labour Code art. 112 p. 1.
STATUTORY = ((1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (1, 7), (1, 8),
             (2, 23), (3, 8), (5, 1), (5, 9), (6, 12), (11, 4))


class Day(IntEnum):
    """The kind of a calendar day (its int value is a model feature)."""

    WORKING = 0
    WEEKEND = 1  # Saturday or Sunday
    HOLIDAY = 2  # a non-working holiday (art. 112)
    BRIDGE = 3  # a weekday made a day off by a transfer (a bridge or a moved holiday)
    WORKING_WEEKEND = 4  # a Saturday or Sunday made a working day by a transfer


# Per decree year: days off moved onto weekdays, and weekend days made working.
_DAYS_OFF = {
    2025: (date(2025, 5, 2), date(2025, 5, 8), date(2025, 6, 13), date(2025, 11, 3), date(2025, 12, 31)),
    2026: (date(2026, 1, 9), date(2026, 3, 9), date(2026, 5, 11), date(2026, 12, 31)),
}
_WORKING_WEEKENDS = {
    2025: (date(2025, 11, 1),),
    2026: (),
}


def covered(year: int) -> bool:
    return year in _DAYS_OFF


@cache
def _year(year: int) -> dict[date, Day]:
    out: dict[date, Day] = {date(year, m, d): Day.HOLIDAY for m, d in STATUTORY}
    if year in _DAYS_OFF:
        out.update({d: Day.BRIDGE for d in _DAYS_OFF[year]})
        out.update({d: Day.WORKING_WEEKEND for d in _WORKING_WEEKENDS[year]})
        return out
    # No decree: art. 112 alone. A non-January holiday on a weekend moves to the next working day.
    for m, d in STATUTORY[8:]:
        day = date(year, m, d)
        if day.weekday() >= 5:
            nxt = day + timedelta(days=1)
            while nxt.weekday() >= 5 or nxt in out:
                nxt += timedelta(days=1)
            out[nxt] = Day.BRIDGE
    return out


def day_kind(day: date) -> Day:
    kind = _year(day.year).get(day)
    if kind is not None:
        return kind
    return Day.WEEKEND if day.weekday() >= 5 else Day.WORKING


def non_working(day: date) -> bool:
    return day_kind(day) in (Day.WEEKEND, Day.HOLIDAY, Day.BRIDGE)


def weekends_only(day: date) -> Day:
    """A calendar with no holidays (for series from elsewhere): Saturday and Sunday off."""
    return Day.WEEKEND if day.weekday() >= 5 else Day.WORKING
