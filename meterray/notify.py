"""What a device event means to people: its notification kind, its identity, who hears of it on which
channel, throttling, the words. Pure (no I/O): actors.notifier applies it, storage keeps its state.
"""
from __future__ import annotations

import enum
import hashlib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from meterray.auth_backends import BackendConfigError
from meterray.domain import DeviceEvent, DeviceStatus
from meterray.settings import Settings


class Kind(str, enum.Enum):
    DEVICE_OFFLINE = "device_offline"
    DEVICE_DEGRADED = "device_degraded"
    DEVICE_STALE = "device_stale"
    DEVICE_ONLINE = "device_online"  # back online after offline, degraded or stale
    DATA_QUALITY = "data_quality"  # a data-quality alarm (counter_decrease events)


class Channel(str, enum.Enum):
    IN_APP = "in_app"
    EMAIL = "email"


_BY_STATUS = {DeviceStatus.OFFLINE: Kind.DEVICE_OFFLINE, DeviceStatus.DEGRADED: Kind.DEVICE_DEGRADED,
              DeviceStatus.STALE: Kind.DEVICE_STALE}
_TROUBLE = frozenset(_BY_STATUS)


def kind_of(event: DeviceEvent) -> Kind | None:
    """The notification kind of a device event, or None when nobody needs to hear of it (a device
    seen for the first time going online: unknown → online)."""
    if event.kind == "counter_decrease":
        return Kind.DATA_QUALITY
    if event.kind != "status" or event.status == event.previous:
        return None
    if event.status is DeviceStatus.ONLINE:
        return Kind.DEVICE_ONLINE if event.previous in _TROUBLE else None
    return _BY_STATUS.get(event.status)


def event_key(event: DeviceEvent) -> str:
    """The event's identity (32 hex digits): a redelivered event is identical to the first (the device
    processor's contract: same device, kind, timestamp, transition and reason), so it has the same key."""
    text = "\x1f".join((event.device_id, str(event.ts_ms), event.kind, event.previous.value, event.status.value,
                        event.reason))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


_EMAIL_NAMESPACE = uuid.UUID("8d6f3c1e-5b2a-4f0e-9a7d-3c1b2e4f5a6d")


def idempotence_key(user_id: uuid.UUID, key: str) -> uuid.UUID:
    """One logical e-mail (this user, this event) has one key, whoever writes or retries it."""
    return uuid.uuid5(_EMAIL_NAMESPACE, f"{user_id}|{key}")


@dataclass(frozen=True, slots=True)
class Rule:
    kind: Kind
    enabled: bool
    roles: frozenset[str]
    channels: frozenset[Channel]


@dataclass(frozen=True, slots=True)
class Recipient:
    user_id: uuid.UUID
    email: str
    role: str
    in_app: bool = True  # the user's channel preferences
    email_on: bool = True
    muted: frozenset[str] = frozenset()


def channels_for(rule: Rule | None, user: Recipient) -> frozenset[Channel]:
    """The organisation's rule for the kind, narrowed by the user's own preferences."""
    if rule is None or not rule.enabled or user.role not in rule.roles or rule.kind.value in user.muted:
        return frozenset()
    wanted = {Channel.IN_APP} if user.in_app else set()
    if user.email_on:
        wanted.add(Channel.EMAIL)
    return rule.channels & frozenset(wanted)


@dataclass(frozen=True, slots=True)
class ThrottleState:
    """Per device and kind: notifications pass at most once per window (in event time, so a replay
    decides the same); the events inside a window are counted."""
    window_until_ms: int
    last_event_key: str
    suppressed: int = 0  # since the last notification
    suppressed_total: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    key: str
    notify: bool
    suppressed_before: int  # like events throttled since the previous notification (told in this one)
    previous_key: str | None  # the notification a suppressed event is counted against


def throttle(state: ThrottleState | None, key: str, ts_ms: int, window_ms: int) -> tuple[Decision, ThrottleState]:
    if state is not None and ts_ms < state.window_until_ms:
        return (Decision(key, False, 0, state.last_event_key),
                replace(state, suppressed=state.suppressed + 1, suppressed_total=state.suppressed_total + 1))
    before = state.suppressed if state is not None else 0
    total = state.suppressed_total if state is not None else 0
    return Decision(key, True, before, None), ThrottleState(ts_ms + window_ms, key, 0, total)


_TITLES = {Kind.DEVICE_OFFLINE: "{device} is offline", Kind.DEVICE_DEGRADED: "{device} is degraded",
           Kind.DEVICE_STALE: "{device} sends stale data", Kind.DEVICE_ONLINE: "{device} is back online",
           Kind.DATA_QUALITY: "{device}: data-quality alarm"}


@dataclass(frozen=True, slots=True)
class Message:
    title: str
    body: str


def render(kind: Kind, event: DeviceEvent, device_name: str | None, when_utc: str, suppressed_before: int) -> Message:
    device = device_name or event.device_id
    lines = [f"{_TITLES[kind].format(device=device)} since {when_utc} UTC.", f"Reason: {event.reason}."]
    if event.device_id != device:
        lines.append(f"Device id: {event.device_id}.")
    if suppressed_before:
        lines.append(f"{suppressed_before} similar event(s) were not sent since the previous notification "
                     "(throttled).")
    return Message(_TITLES[kind].format(device=device), "\n".join(lines))


def effective_rules(defaults: Iterable[Rule], own: Mapping[Kind, Rule]) -> dict[Kind, Rule]:
    """An organisation's rule for a kind replaces the platform's default for it."""
    return {**{r.kind: r for r in defaults}, **own}


class EmailBackend(str, enum.Enum):
    UNISENDER = "unisender"
    LOG_ONLY = "log-only"  # development: e-mails are written to the log and marked `logged` in the outbox


def email_backend(settings: Settings) -> EmailBackend:
    """The e-mail sender in force; raises BackendConfigError in production when it would fall back."""
    if settings.unisender_api_key.get_secret_value():
        return EmailBackend.UNISENDER
    if settings.env == "production":
        raise BackendConfigError("METERRAY_ENV=production refuses to fall back: METERRAY_UNISENDER_API_KEY is "
                                 "not set (e-mail notifications would only be logged)")
    return EmailBackend.LOG_ONLY


def email_warnings(backend: EmailBackend) -> list[str]:
    if backend is EmailBackend.LOG_ONLY:
        return ["METERRAY_UNISENDER_API_KEY is not set: e-mail notifications are written to the log and the "
                "outbox (status 'logged'), never sent"]
    return []
