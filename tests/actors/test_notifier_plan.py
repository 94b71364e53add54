"""The notifier's decisions for a batch, without Ray or a database (actors.notifier.plan is pure): an
event seen twice in a batch or before makes nothing, an old one is recorded and tells nobody, nobody to
tell records nothing, and each user's channels give in-app rows and e-mails with one idempotence key."""
from __future__ import annotations

import time
import uuid

from actors.notifier import plan
from meterray.domain import DeviceEvent, DeviceStatus
from meterray.notify import Channel, Kind, Recipient, Rule, ThrottleState, event_key, idempotence_key
from meterray.settings import Settings
from storage.postgres.notify import Owner

ORG = uuid.uuid4()
OWNERS = {"m-1": Owner(ORG, "Meter 1")}
RULES = [Rule(Kind.DEVICE_OFFLINE, True, frozenset({"admin", "operator"}), frozenset({Channel.IN_APP, Channel.EMAIL}))]
ANNA = Recipient(uuid.uuid4(), "anna@example.com", "admin")
OLEG = Recipient(uuid.uuid4(), "oleg@example.com", "operator", email_on=False)
SETTINGS = Settings(notify_throttle_s=600, notify_max_event_age_s=3600)


def _offline(ts_ms: int) -> DeviceEvent:
    return DeviceEvent("m-1", ts_ms, "status", DeviceStatus.OFFLINE, DeviceStatus.DEGRADED, "timeout", ("timeout",))


def test_one_event_gives_each_user_their_channels_and_one_key_per_email() -> None:
    now = int(time.time() * 1000)
    event = _offline(now)
    state: dict[tuple[str, str], ThrottleState] = {}
    out = plan([(event, Kind.DEVICE_OFFLINE)] * 2, OWNERS, {ORG: [ANNA, OLEG]}, RULES, {}, state, set(), now, SETTINGS)
    assert [e.outcome for e in out.events] == ["notified"]  # the copy in the same batch made nothing
    assert sorted(n.user_id for n in out.notifications) == sorted([ANNA.user_id, OLEG.user_id])
    assert [(o.user_id, o.idempotence_key) for o in out.outbox] == [
        (ANNA.user_id, idempotence_key(ANNA.user_id, event_key(event)))]  # oleg turned e-mail off
    assert out.notifications[0].title == "Meter 1 is offline"
    assert out.outbox[0].subject == "meterray: Meter 1 is offline"
    assert state[("m-1", "device_offline")].window_until_ms == now + 600_000


def test_seen_old_and_unheard_events_make_no_notification() -> None:
    now = int(time.time() * 1000)
    seen = {event_key(_offline(now))}
    out = plan([(_offline(now), Kind.DEVICE_OFFLINE)], OWNERS, {ORG: [ANNA]}, RULES, {}, {}, seen, now, SETTINGS)
    assert not out.events and not out.notifications and not out.outbox  # handled before: a redelivery
    old = _offline(now - 3_600_001)
    out = plan([(old, Kind.DEVICE_OFFLINE)], OWNERS, {ORG: [ANNA]}, RULES, {}, {}, set(), now, SETTINGS)
    assert [e.outcome for e in out.events] == ["too_old"] and not out.notifications and not out.outbox
    customer = Recipient(uuid.uuid4(), "cora@example.com", "customer")  # not whom the rule names
    out = plan([(_offline(now), Kind.DEVICE_OFFLINE)], OWNERS, {ORG: [customer]}, RULES, {}, {}, set(), now, SETTINGS)
    assert not out.events and not out.notifications
    own = {ORG: {Kind.DEVICE_OFFLINE: Rule(Kind.DEVICE_OFFLINE, False, RULES[0].roles, RULES[0].channels)}}
    out = plan([(_offline(now), Kind.DEVICE_OFFLINE)], OWNERS, {ORG: [ANNA]}, RULES, own, {}, set(), now, SETTINGS)
    assert not out.events  # the organisation turned the kind off


def test_a_burst_notifies_once_and_counts_the_rest_on_the_first() -> None:
    now = int(time.time() * 1000)
    burst = [(_offline(now + i), Kind.DEVICE_OFFLINE) for i in range(4)]
    out = plan(burst, OWNERS, {ORG: [ANNA]}, RULES, {}, {}, set(), now, SETTINGS)
    assert [e.outcome for e in out.events] == ["notified"] + ["suppressed"] * 3
    assert len(out.notifications) == 1 and len(out.outbox) == 1
    assert out.suppressed_after == {event_key(burst[0][0]): 3}
