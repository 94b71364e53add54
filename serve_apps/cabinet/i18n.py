"""The cabinet's two languages (Russian by default, English) and the user's locale and time zone.

The language is the user's choice (cookie `mr_lang`, switched by a link on every page); the locale that
formats numbers and dates is that language in the region the browser asks for when it names one
(Accept-Language `en-GB` → en_GB), else ru_RU / en_US. The time zone is the browser's (cookie `mr_tz`,
set by the cabinet's script from Intl), else the platform's default (METERRAY_DEFAULT_TIMEZONE).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime
from babel.numbers import format_decimal

LANGUAGES = ("ru", "en")
DEFAULT_LANGUAGE = "ru"
_DEFAULT_REGION = {"ru": "RU", "en": "US"}


@dataclass(frozen=True)
class UserLocale:
    lang: str  # "ru" | "en": the messages
    locale: Locale  # numbers and dates
    tz: ZoneInfo

    def t(self, key: str, **values: object) -> str:
        text = MESSAGES[self.lang].get(key) or MESSAGES["en"].get(key) or key
        return text.format(**values) if values else text

    def detail(self, english: str) -> str:
        """A reason the users API gives in English, in the user's language when it is a known one."""
        for key in (english, english.split(", not ")[0]):
            if (text := MESSAGES[self.lang].get(f"detail.{key}")) is not None:
                return text
        return english

    def number(self, value: float | None, digits: int = 2) -> str:
        if value is None:
            return "—"
        return str(format_decimal(value, format=f"#,##0.{'0' * digits}" if digits else "#,##0", locale=self.locale))

    def when(self, dt: datetime | None, form: str = "short") -> str:
        """A moment in the user's time zone, as the user's locale writes it."""
        if dt is None:
            return "—"
        return str(format_datetime(dt.astimezone(self.tz), form, tzinfo=self.tz, locale=self.locale))

    def period(self, start: datetime, interval: str) -> str:
        """An interval's start: a day or a month as the meter's own calendar has it (the time carries the
        meter's offset), a moment in the user's zone for half-hours and hours."""
        if interval == "1d":
            return str(format_date(start.date(), "short", locale=self.locale))
        if interval == "1mo":
            return str(format_date(start.date(), "LLLL y", locale=self.locale))
        return self.when(start)

    @property
    def tag(self) -> str:  # BCP 47, for <html lang> and the browser's Intl
        return f"{self.locale.language}-{self.locale.territory}" if self.locale.territory else self.locale.language


def user_locale(lang_cookie: str | None, accept_language: str | None, tz_cookie: str | None,
                default_tz: str) -> UserLocale:
    lang = lang_cookie if lang_cookie in LANGUAGES else DEFAULT_LANGUAGE
    return UserLocale(lang, _locale(lang, accept_language), _zone(tz_cookie, default_tz))


def _locale(lang: str, accept_language: str | None) -> Locale:
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().replace("-", "_")
        if tag.lower().startswith(lang + "_"):
            try:
                return Locale.parse(tag)
            except (ValueError, UnknownLocaleError):
                continue
    return Locale(lang, _DEFAULT_REGION[lang])


def _zone(name: str | None, default: str) -> ZoneInfo:
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo(default)


# Every text of the pages, by language (messages.json); "err.<type>" are the registration's field errors by
# the users API's `type` (serve_apps.users.register): the API's own text is English, these say the same
# in the user's language.
MESSAGES: dict[str, dict[str, str]] = json.loads((Path(__file__).parent / "messages.json").read_text("utf-8"))
