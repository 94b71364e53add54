"""The notification rules, pure: which events notify, an event's identity, who hears on which channel,
throttling per device and kind, and the e-mail sender's fallback (refused in production)."""
from __future__ import annotations

import uuid

import pytest

from meterray.auth_backends import BackendConfigError
from meterray.domain import DeviceEvent, DeviceStatus
from meterray.notify import (
    Channel,
    EmailBackend,
    Kind,
    Recipient,
    Rule,
    channels_for,
    email_backend,
    event_key,
    idempotence_key,
    kind_of,
    render,
    throttle,
)
from meterray.settings import Settings

S = DeviceStatus


def _event(status: S, previous: S, ts_ms: int = 1_000_000, kind: str = "status",
           reason: str = "timeout") -> DeviceEvent:
    return DeviceEvent("m-1", ts_ms, kind, status, previous, reason, ("timeout",))


@pytest.mark.parametrize(("status", "previous", "kind"), [
    (S.OFFLINE, S.DEGRADED, Kind.DEVICE_OFFLINE), (S.DEGRADED, S.ONLINE, Kind.DEVICE_DEGRADED),
    (S.STALE, S.ONLINE, Kind.DEVICE_STALE), (S.ONLINE, S.OFFLINE, Kind.DEVICE_ONLINE),
    (S.ONLINE, S.STALE, Kind.DEVICE_ONLINE),
    (S.ONLINE, S.UNKNOWN, None),  # a device heard for the first time is no news
    (S.UNKNOWN, S.ONLINE, None)])
def test_each_transition_has_its_kind_or_none(status: S, previous: S, kind: Kind | None) -> None:
    assert kind_of(_event(status, previous)) is kind


def test_a_counter_decrease_is_a_data_quality_alarm() -> None:
    assert kind_of(_event(S.ONLINE, S.ONLINE, kind="counter_decrease")) is Kind.DATA_QUALITY


def test_an_event_key_is_the_same_for_a_redelivered_event_and_differs_for_another() -> None:
    first = _event(S.OFFLINE, S.DEGRADED)
    assert event_key(first) == event_key(_event(S.OFFLINE, S.DEGRADED)) and len(event_key(first)) == 32
    assert event_key(first) != event_key(_event(S.OFFLINE, S.DEGRADED, ts_ms=1_000_001))
    assert event_key(first) != event_key(_event(S.OFFLINE, S.STALE))
    user = uuid.uuid4()
    assert idempotence_key(user, event_key(first)) == idempotence_key(user, event_key(first))
    assert idempotence_key(user, event_key(first)) != idempotence_key(uuid.uuid4(), event_key(first))


def test_channels_are_the_rule_narrowed_by_the_users_preferences() -> None:
    rule = Rule(Kind.DEVICE_OFFLINE, True, frozenset({"admin", "operator"}), frozenset({Channel.IN_APP, Channel.EMAIL}))
    admin = Recipient(uuid.uuid4(), "a@x.example", "admin")
    assert channels_for(rule, admin) == {Channel.IN_APP, Channel.EMAIL}
    assert channels_for(rule, Recipient(uuid.uuid4(), "c@x.example", "customer")) == frozenset()  # not whom
    assert channels_for(rule, Recipient(admin.user_id, admin.email, "admin", email_on=False)) == {Channel.IN_APP}
    assert channels_for(rule, Recipient(admin.user_id, admin.email, "admin", in_app=False)) == {Channel.EMAIL}
    assert channels_for(rule, Recipient(admin.user_id, admin.email, "admin",
                                        muted=frozenset({"device_offline"}))) == frozenset()
    in_app_only = Rule(Kind.DEVICE_OFFLINE, True, frozenset({"admin"}), frozenset({Channel.IN_APP}))
    assert channels_for(in_app_only, admin) == {Channel.IN_APP}
    assert channels_for(Rule(Kind.DEVICE_OFFLINE, False, rule.roles, rule.channels), admin) == frozenset()
    assert channels_for(None, admin) == frozenset()


def test_a_flapping_device_notifies_once_per_window_and_counts_the_rest() -> None:
    window = 600_000
    state = None
    decisions = []
    for i, ts in enumerate([0, 60_000, 120_000, 599_999, 600_000, 650_000]):
        decision, state = throttle(state, f"k{i}", ts, window)
        decisions.append(decision)
    assert [d.notify for d in decisions] == [True, False, False, False, True, False]
    assert [d.previous_key for d in decisions] == [None, "k0", "k0", "k0", None, "k4"]
    assert decisions[4].suppressed_before == 3  # the second notification says how many were held back
    assert state is not None and (state.suppressed, state.suppressed_total, state.last_event_key) == (1, 4, "k4")
    # A window of 0 throttles nothing.
    first, s = throttle(None, "k8", 700_000, 0)
    second, _ = throttle(s, "k9", 700_000, 0)
    assert first.notify and second.notify


def test_the_text_names_the_device_the_reason_and_what_was_held_back() -> None:
    message = render(Kind.DEVICE_OFFLINE, _event(S.OFFLINE, S.DEGRADED), "Meter 7", "2026-11-26 10:00:00", 3)
    assert message.title == "Meter 7 is offline"
    assert "timeout" in message.body and "m-1" in message.body and "3 similar" in message.body


def test_no_unisender_key_is_a_log_only_sender_in_development_and_refused_in_production() -> None:
    assert email_backend(Settings(unisender_api_key="k")) is EmailBackend.UNISENDER
    assert email_backend(Settings()) is EmailBackend.LOG_ONLY
    production = Settings(env="production", token_signing_key="x" * 40)
    with pytest.raises(BackendConfigError, match="METERRAY_UNISENDER_API_KEY"):
        email_backend(production)
    assert email_backend(Settings(env="production", token_signing_key="x" * 40, unisender_api_key="k")) \
        is EmailBackend.UNISENDER
