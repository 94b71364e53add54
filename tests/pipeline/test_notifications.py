"""Notifications on the real pipeline: a meter of an organisation goes offline (the simulator's fault
injection) → the device processor's event → the Notifier → exactly one in-app notification per user and
exactly one e-mail each at the fake Unisender Go → its webhook marks the e-mail delivered. Flapping is
throttled and counted, a redelivered event creates nothing, Unisender's 5xx (and a lost answer) are
retried and the e-mail is sent once, a forged webhook is refused, another user's notification is a 404.

The meters are this module's own (a small simulator, so no other test's faults touch them); synthetic
events for flapping and retries go to `device-events` through Kafka like the device processor's.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from meterray.domain import DeviceEvent, DeviceStatus
from meterray.identity import Role
from meterray.notify import event_key
from meterray.settings import Settings
from simulators.fake_unisender import FakeUnisender, UnisenderFault
from storage.kafka import codec, topics
from storage.kafka.producer import AsyncProducer
from storage.postgres import devices as device_repo
from tests.auth_headers import bearer
from tests.conftest import POLL_INTERVAL_S, UNISENDER_KEY, UNISENDER_PORT, wait_for
from tests.fakes import valid_inn
from tests.pipeline.helpers import sql
from tests.ports import port

# Inside this checkout's own block of ten ports (the session simulator takes base - 1 .. base + 3; other
# checkouts' blocks start ten apart): control port base + 5, the meters' port base + 6.
OWN_SIM_PORT = port("notifications-sim")
PREFIX = "notify-"
S = DeviceStatus


@pytest.fixture(scope="module")
def unisender() -> Iterator[FakeUnisender]:
    fake = FakeUnisender(UNISENDER_PORT, UNISENDER_KEY).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def meters(runtime: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two meters of this module's own, polled by the runtime."""
    from meterray.app.demo import manifest_connections, start_simulator

    settings = runtime["settings"]
    manifest = tmp_path_factory.mktemp("notify-sim") / "manifest.json"
    proc = start_simulator(settings, 2, 2, OWN_SIM_PORT, manifest)
    connections = manifest_connections(json.loads(Path(manifest).read_text()), POLL_INTERVAL_S, 0.5, prefix=PREFIX)
    _db(settings, device_repo.save_modbus_connections, connections)
    yield [d.device_id for c in connections for d in c.devices]
    _db(settings, device_repo.delete_connections, [c.connection_id for c in connections])
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)


def _db(settings: Settings, fn: Any, *args: Any) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(settings.pg_dsn)
        try:
            return await fn(conn, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


class Org:
    def __init__(self, settings: Settings, users: dict[str, str]) -> None:
        """An organisation with users {label: role}; each label's e-mail is <label>-<org id>@example.com."""
        self.id = sql(settings.pg_dsn, "INSERT INTO auth.organisations (inn, inn_verified_by, name)"
                                       " VALUES ($1, 'checksum', 'Notify test') RETURNING id",
                      valid_inn(uuid.uuid4().int))[0]["id"]
        self.users: dict[str, uuid.UUID] = {}
        self.emails: dict[str, str] = {}
        self.headers: dict[str, dict[str, str]] = {}
        for label, role in users.items():
            email = f"{label}-{self.id.hex[:8]}@example.com"
            user_id = sql(settings.pg_dsn, "INSERT INTO auth.users (email, password_hash, organisation_id, role)"
                                           " VALUES ($1, '$argon2id$v=19$m=65536,t=3,p=4$unused', $2, $3)"
                                           " RETURNING id", email, self.id, role)[0]["id"]
            self.users[label], self.emails[label] = user_id, email
            self.headers[label] = bearer(settings, Role(role), self.id, user_id)

    def own(self, settings: Settings, device_id: str) -> None:
        sql(settings.pg_dsn, "INSERT INTO devices.devices (id, name, protocol, profile, unit_id)"
                             " VALUES ($1, $1, 'partner', 'sdm630', 1) ON CONFLICT DO NOTHING", device_id)
        sql(settings.pg_dsn, "UPDATE devices.devices SET organisation_id = $2 WHERE id = $1", device_id, self.id)


def call(method: str, url: str, headers: dict[str, str] | None = None, body: Any = None,
         raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def _produce(settings: Settings, events: list[DeviceEvent]) -> None:
    async def run() -> None:
        topic = settings.topic(topics.DEVICE_EVENTS)
        async with AsyncProducer(settings.kafka_bootstrap) as p:
            await p.send_many([(topic, topics.partition_for(e.device_id, settings.kafka_partitions),
                                e.device_id.encode(), codec.encode_event(e)) for e in events])

    asyncio.run(run())


def _notifications(settings: Settings, device_id: str, kind: str | None = None) -> list[asyncpg.Record]:
    return sql(settings.pg_dsn, "SELECT * FROM notify.notifications WHERE device_id = $1"
                                " AND ($2::text IS NULL OR kind = $2) ORDER BY id", device_id, kind)


def _outbox(settings: Settings, device_id: str, kind: str) -> list[asyncpg.Record]:
    return sql(settings.pg_dsn, "SELECT o.* FROM notify.email_outbox o JOIN notify.events e USING (event_key)"
                                " WHERE e.device_id = $1 AND e.kind = $2 ORDER BY o.id", device_id, kind)


def _all_sent(settings: Settings, device_id: str, kind: str, n: int) -> list[asyncpg.Record] | None:
    rows = _outbox(settings, device_id, kind)
    return rows if len(rows) == n and all(r["status"] == "sent" for r in rows) else None


def _at_fake(unisender: FakeUnisender, rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
    keys = {str(r["idempotence_key"]) for r in rows}
    return [s for s in unisender.sent if s["idempotence_key"] in keys]


def _status(settings: Settings, device_id: str) -> str | None:
    rows = sql(settings.pg_dsn, "SELECT status FROM devices.device_state WHERE device_id = $1", device_id)
    return rows[0]["status"] if rows else None


def test_a_meter_going_offline_notifies_each_user_once_in_app_and_by_one_email_delivered_by_webhook(
        runtime: dict, meters: list[str], unisender: FakeUnisender) -> None:
    settings, api = runtime["settings"], runtime["api"]
    org = Org(settings, {"anna": "admin", "oleg": "operator"})
    other = Org(settings, {"ivan": "admin"})
    device_id = meters[0]
    org.own(settings, device_id)
    wait_for(lambda: _status(settings, device_id) == "online", 90, f"{device_id} to be online")
    control = f"http://127.0.0.1:{OWN_SIM_PORT - 1}"
    assert call("POST", f"{control}/faults", body={"device_id": device_id, "fault": "timeout"})[0] == 200
    try:
        wait_for(lambda: _all_sent(settings, device_id, "device_offline", 2), 90,
                 "the offline e-mails of both users sent")
    finally:
        call("DELETE", f"{control}/faults")
    offline = _notifications(settings, device_id, "device_offline")
    assert sorted(n["user_id"] for n in offline) == sorted(org.users.values())  # one each, nobody else
    emails = _outbox(settings, device_id, "device_offline")
    at_fake = _at_fake(unisender, emails)
    assert sorted(s["email"] for s in at_fake) == sorted(org.emails.values())  # exactly one e-mail each
    assert all("is offline" in s["subject"] and device_id in s["subject"] for s in at_fake)
    assert {r["job_id"] for r in emails} == {s["job_id"] for s in at_fake}

    # The caller's own list, unread first; another user of the same organisation or another one: 404.
    status, page = call("GET", f"{api}/api/v1/notifications", org.headers["anna"])
    assert status == 200 and page["unread"] >= 1
    mine = [n for n in page["notifications"] if n["device_id"] == device_id and n["kind"] == "device_offline"]
    assert len(mine) == 1 and mine[0]["read"] is False and "timeout" in mine[0]["body"]
    anna_offline = mine[0]["id"]
    assert call("POST", f"{api}/api/v1/notifications/{anna_offline}/read", other.headers["ivan"])[0] == 404
    assert call("POST", f"{api}/api/v1/notifications/{anna_offline}/read", org.headers["oleg"])[0] == 404
    assert all(n["id"] != anna_offline for n in call("GET", f"{api}/api/v1/notifications",
                                                    other.headers["ivan"])[1]["notifications"])
    assert call("GET", f"{api}/api/v1/notifications")[0] == 401

    # Unisender's webhook: delivered, once; a resent batch changes nothing; a forged one is refused.
    anna_email = next(r for r in emails if r["user_id"] == org.users["anna"])
    url = f"{api}/api/v1/notifications/unisender-webhook"
    delivered = unisender.webhook_body([unisender.status_event(anna_email["job_id"], anna_email["email"], "sent"),
                                        unisender.status_event(anna_email["job_id"], anna_email["email"], "delivered")])
    assert call("POST", url, raw=delivered) == (200, {"status": "ok", "events": 2, "updated": 2})
    assert call("POST", url, raw=delivered) == (200, {"status": "ok", "events": 0, "updated": 0})
    forged = unisender.webhook_body([unisender.status_event(anna_email["job_id"], anna_email["email"], "hard_bounced")],
                                    api_key="not-our-key")
    assert call("POST", url, raw=forged)[0] == 403
    assert call("POST", url, raw=b'{"auth": "x", "events_by_user": [')[0] == 400
    assert call("GET", url)[0] == 200  # Unisender's activation check
    row = sql(settings.pg_dsn, "SELECT delivery_status, delivery_detail FROM notify.email_outbox WHERE id = $1",
              anna_email["id"])[0]
    assert (row["delivery_status"], row["delivery_detail"]) == ("delivered", "ok 250 2.0.0 Ok: queued")

    # Back online: one more notification and e-mail each; still exactly one offline e-mail each.
    wait_for(lambda: _all_sent(settings, device_id, "device_online", 2), 60, "the back-online e-mails sent")
    assert len(_at_fake(unisender, _outbox(settings, device_id, "device_offline"))) == 2
    assert len(_notifications(settings, device_id, "device_offline")) == 2

    # Read one, then all; paging walks every notification once, unread first.
    status, one = call("POST", f"{api}/api/v1/notifications/{anna_offline}/read", org.headers["anna"])
    assert status == 200 and one["read"] is True
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = "limit=1" + (f"&cursor={cursor}" if cursor else "")
        status, page = call("GET", f"{api}/api/v1/notifications?{query}", org.headers["anna"])
        assert status == 200
        seen += page["notifications"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len({n["id"] for n in seen}) == len(seen) == len(_notifications(settings, device_id)) // 2
    assert [n["read"] for n in seen] == sorted(n["read"] for n in seen)  # unread first
    assert seen[-1]["id"] == anna_offline
    assert call("GET", f"{api}/api/v1/notifications?cursor=garbage", org.headers["anna"])[0] == 422
    status, done = call("POST", f"{api}/api/v1/notifications/read-all", org.headers["anna"])
    assert status == 200 and done["marked_read"] == len(seen) - 1
    assert call("GET", f"{api}/api/v1/notifications", org.headers["anna"])[1]["unread"] == 0

    # The runtime shows the notifier and its e-mail sender.
    def notifier() -> dict[str, Any] | None:
        status, view = call("GET", f"{api}/api/v1/runtime?window_s=0.5", bearer(settings))
        assert status == 200
        counters = next(a for a in view["actors"] if a["role"] == "notifier")["counters"]
        return counters if counters.get("emails_sent", 0) >= 4 else None

    counters = wait_for(notifier, 30, "the notifier's counters in /api/v1/runtime")
    assert counters["email_sender"] == "unisender" and counters["fallbacks"] == []  # type: ignore[index]


def _by_keys(settings: Settings, table: str, keys: list[str]) -> list[asyncpg.Record]:
    return sql(settings.pg_dsn, f"SELECT * FROM notify.{table} WHERE event_key = ANY($1::text[]) ORDER BY id", keys)


def _sent_by_keys(settings: Settings, keys: list[str], n: int) -> list[asyncpg.Record] | None:
    rows = _by_keys(settings, "email_outbox", keys)
    return rows if len(rows) == n and all(r["status"] == "sent" for r in rows) else None


# The device processor may also sweep a synthetic device (registered, never heard) offline on its own:
# the assertions below look at the events this test produced, by their keys.

def test_a_flapping_meter_is_throttled_and_counted_and_a_redelivered_event_creates_nothing(
        runtime: dict, unisender: FakeUnisender) -> None:
    settings = runtime["settings"]
    org = Org(settings, {"anna": "admin", "oleg": "operator"})
    device_id = f"notify-flap-{uuid.uuid4().hex[:6]}"
    org.own(settings, device_id)
    now = int(time.time() * 1000)
    flaps: list[DeviceEvent] = []
    for i in range(3):
        flaps.append(DeviceEvent(device_id, now + i * 2000, "status", S.OFFLINE, S.ONLINE, "timeout", ("timeout",)))
        flaps.append(DeviceEvent(device_id, now + i * 2000 + 1000, "status", S.ONLINE, S.OFFLINE, "answers", ()))
    keys = [event_key(e) for e in flaps]
    _produce(settings, flaps)
    events = wait_for(lambda: len(r := sql(settings.pg_dsn, "SELECT event_key, outcome FROM notify.events"
                                                            " WHERE event_key = ANY($1::text[])", keys)) == 6 and r,
                      60, "the six events handled")
    outcome = {r["event_key"]: r["outcome"] for r in events}  # type: ignore[union-attr]
    assert [outcome[k] for k in keys] == ["notified", "notified"] + ["suppressed"] * 4
    notes = _by_keys(settings, "notifications", keys)
    # One offline and one online notification per user, not three of each; the held-back ones counted on them.
    assert sorted((n["event_key"], n["user_id"]) for n in notes) == sorted(
        (k, u) for k in keys[:2] for u in org.users.values())
    assert all(n["suppressed"] >= 2 for n in notes)
    for kind in ("device_offline", "device_online"):
        throttle = sql(settings.pg_dsn, "SELECT suppressed_total FROM notify.throttle WHERE device_id = $1"
                                        " AND kind = $2", device_id, kind)[0]
        assert throttle["suppressed_total"] >= 2
    sent = wait_for(lambda: _sent_by_keys(settings, keys, 4), 60, "two e-mails per user sent")
    assert len(_at_fake(unisender, sent)) == 4  # type: ignore[arg-type]

    # The first event again (Kafka redelivers after a crash before the commit), then a new one behind it
    # on the same partition: when the new one is handled, the redelivered one was too, and made nothing.
    alarm = DeviceEvent(device_id, now + 7000, "counter_decrease", S.ONLINE, S.ONLINE, "counter went back", ())
    _produce(settings, [flaps[0], alarm])
    wait_for(lambda: _by_keys(settings, "notifications", [event_key(alarm)]), 60, "the alarm behind the redelivery")
    assert len(_by_keys(settings, "notifications", keys)) == 4
    assert len(_by_keys(settings, "email_outbox", keys)) == 4
    wait_for(lambda: _sent_by_keys(settings, [event_key(alarm)], 2), 60, "the alarm e-mails sent")
    assert len(_at_fake(unisender, _by_keys(settings, "email_outbox", keys))) == 4


def test_unisender_errors_are_retried_and_the_email_is_sent_once(runtime: dict, unisender: FakeUnisender) -> None:
    settings = runtime["settings"]
    wait_for(lambda: not sql(settings.pg_dsn, "SELECT 1 FROM notify.email_outbox WHERE status = 'pending'"), 60,
             "no e-mail of another test pending (the faults below are counted per call)")
    org = Org(settings, {"anna": "admin"})
    device_id = f"notify-retry-{uuid.uuid4().hex[:6]}"
    org.own(settings, device_id)
    now = int(time.time() * 1000)

    unisender.fail(UnisenderFault.SERVER_ERROR, calls=2)  # 503, 503, then accepted
    offline = DeviceEvent(device_id, now, "status", S.OFFLINE, S.DEGRADED, "timeout", ("timeout",))
    _produce(settings, [offline])
    [row] = wait_for(lambda: _sent_by_keys(settings, [event_key(offline)], 1), 90, "the e-mail sent after 503s")
    assert row["attempts"] == 3 and "503" in row["last_error"]
    assert len(_at_fake(unisender, [row])) == 1

    # Accepted, but the answer is lost (502): the retry carries the same idempotence key, nothing is sent twice.
    unisender.fail(UnisenderFault.ACCEPTED_THEN_ERROR, calls=1)
    online = DeviceEvent(device_id, now + 1000, "status", S.ONLINE, S.OFFLINE, "answers", ())
    _produce(settings, [online])
    [row] = wait_for(lambda: _sent_by_keys(settings, [event_key(online)], 1), 90, "the e-mail sent after a 502")
    [sent] = _at_fake(unisender, [row])
    assert row["attempts"] == 2 and row["job_id"] == sent["job_id"]


def test_preferences_and_the_organisations_rules_choose_who_hears_on_which_channel(
        runtime: dict, unisender: FakeUnisender) -> None:
    settings, api = runtime["settings"], runtime["api"]
    org = Org(settings, {"anna": "admin", "oleg": "operator", "ivan": "operator", "cora": "customer"})
    url = f"{api}/api/v1/notifications/preferences"
    assert call("GET", url, org.headers["oleg"]) == (200, {"in_app": True, "email": True, "muted_kinds": []})
    assert call("PUT", url, org.headers["oleg"], {"in_app": True, "email": False}) == (
        200, {"in_app": True, "email": False, "muted_kinds": []})
    assert call("PUT", url, org.headers["ivan"], {"muted_kinds": ["device_offline"]})[0] == 200
    assert call("GET", url, org.headers["ivan"])[1]["muted_kinds"] == ["device_offline"]
    assert call("PUT", url, org.headers["ivan"], {"muted_kinds": ["everything"]})[0] == 422
    assert call("PUT", url, org.headers["ivan"], {"email": "sometimes"})[0] == 422
    assert call("PUT", url, body={"email": False})[0] == 401
    # The organisation's own rule for offline: admins and operators only (customers keep the default elsewhere).
    sql(settings.pg_dsn, "INSERT INTO notify.rules (organisation_id, kind, roles, channels)"
                         " VALUES ($1, 'device_offline', ARRAY['admin', 'operator'], ARRAY['in_app', 'email'])", org.id)
    device_id = f"notify-prefs-{uuid.uuid4().hex[:6]}"
    org.own(settings, device_id)
    offline = DeviceEvent(device_id, int(time.time() * 1000), "status", S.OFFLINE, S.DEGRADED, "timeout", ("timeout",))
    _produce(settings, [offline])
    wait_for(lambda: _by_keys(settings, "notifications", [event_key(offline)]), 60, "the offline notification")
    sent = wait_for(lambda: _sent_by_keys(settings, [event_key(offline)], 1), 60, "anna's e-mail sent")
    in_app = {n["user_id"] for n in _by_keys(settings, "notifications", [event_key(offline)])}
    assert in_app == {org.users["anna"], org.users["oleg"]}  # ivan muted it, cora's role is not in the rule
    assert [r["user_id"] for r in sent] == [org.users["anna"]]  # type: ignore[union-attr]  # oleg: in-app only
