"""The half-hour grid in a device's own time zone, and the 1h / 1d / 1mo sums over it.

Russian commercial metering (АИИС КУЭ) works in 30-minute increments of energy
(shared/reference/energy_domain.md §1.1); Russia spans eleven time zones, so "the half-hour from
14:00" and "the day" are local to the device. No Russian zone observes daylight saving, but other
zones must work too: a local day is 46, 48 or 50 half-hours (a 23-, 24- or 25-hour day; Lord Howe's
30-minute shift gives 47 or 49), energy_domain.md §3.

Slots are built from each local midnight in steps of 30 minutes of real time, so a day's slots
always tile it exactly, whatever the zone's offset (+05:45 included) and whatever its transitions.
Pure: no I/O; time zones are `zoneinfo.ZoneInfo`.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

HALF_HOUR_MS = 30 * 60 * 1000
HOUR_MS = 2 * HALF_HOUR_MS


class TimezoneError(ValueError):
    pass


def zone(name: str) -> ZoneInfo:
    """An IANA time zone by name (e.g. Europe/Moscow, Asia/Vladivostok); TimezoneError says what to send."""
    try:
        if not name or name != name.strip() or name.startswith("/") or ".." in name:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimezoneError(f"unknown time zone {name!r}; use an IANA name such as Europe/Moscow, "
                            "Asia/Yekaterinburg or Asia/Vladivostok") from None


class Size(StrEnum):
    """What the consumption API sums half-hours into."""

    HALF_HOUR = "30m"
    HOUR = "1h"
    DAY = "1d"
    MONTH = "1mo"


@dataclass(frozen=True, slots=True)
class Slot:
    """One half-hour of a local day. `wall` is the local wall-clock start (hour, minute, fold), the
    key like-day estimation matches on; `fold` tells the two 02:30s of a day that falls back apart."""

    start_ms: int  # UTC epoch milliseconds
    end_ms: int
    day: date  # the local date the slot belongs to
    day_start_ms: int  # that date's local midnight
    wall: tuple[int, int, int]


def _to_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def local_midnight_ms(day: date, tz: ZoneInfo) -> int:
    """The first instant of a local date. Where midnight does not exist (a zone that springs forward
    at 00:00), zoneinfo reads it with the offset before the change: the first instant of the day."""
    return _to_ms(datetime.combine(day, time(0), tzinfo=tz))


def local_date(ms: int, tz: ZoneInfo) -> date:
    return datetime.fromtimestamp(ms / 1000, tz).date()


def half_hours(start_ms: int, end_ms: int, tz: ZoneInfo) -> list[Slot]:
    """Every local half-hour that overlaps [start_ms, end_ms), in order, tiling whole local days."""
    if end_ms <= start_ms:
        return []
    slots: list[Slot] = []
    day = local_date(start_ms, tz)
    last = local_date(end_ms - 1, tz)
    while day <= last:
        lo, hi = local_midnight_ms(day, tz), local_midnight_ms(day + timedelta(days=1), tz)
        t = lo
        while t < hi:
            e = min(t + HALF_HOUR_MS, hi)
            if e > start_ms and t < end_ms:
                w = datetime.fromtimestamp(t / 1000, tz)
                slots.append(Slot(t, e, day, lo, (w.hour, w.minute, w.fold)))
            t = e
        day += timedelta(days=1)
    return slots


def bucket_key(slot: Slot, size: Size) -> tuple[int, ...]:
    """Which 1h / 1d / 1mo bucket a half-hour falls in: hours counted from local midnight (a
    25-hour day has 25), days and months by the local calendar."""
    d = slot.day
    if size is Size.HOUR:
        return (d.toordinal(), (slot.start_ms - slot.day_start_ms) // HOUR_MS)
    if size is Size.DAY:
        return (d.toordinal(),)
    if size is Size.MONTH:
        return (d.year, d.month)
    return (slot.start_ms,)
