"""The Unisender Go client against the local fake speaking the documented format (external_apis.md §3):
a send and its answer, the idempotence key honoured, every documented error as its typed failure, and
the webhook's signature: verified on the raw bytes, refused when tampered with or signed with another key."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from protocols.unisender.client import UnisenderClient
from protocols.unisender.wire import Email, WebhookError, parse_error, status_events, verify
from protocols.upstream import BadKey, InvalidRequest, QuotaExhausted, RateLimited, Unavailable
from simulators.fake_unisender import FakeUnisender, UnisenderFault
from tests.ports import port

KEY = "unisender-client-test-key-5c2a"
PORT = port("unisender-client")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUnisender]:
    server = FakeUnisender(PORT, KEY).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def no_fault(fake: FakeUnisender) -> None:
    fake.fail(UnisenderFault.NONE)


def _email(to: str = "anna@romashka.example", key: str = "3f1c2f8e-2a5b-4c1e-9d7a-0b6f7e1d2c3a") -> Email:
    return Email(to, "Meter {{7}} is offline", "Meter 7 is offline since 10:00.", "<p>Meter 7 is offline</p>",
                 "noreply@meterray.local", "meterray", key, {"outbox_id": "1"})


def _send(fake: FakeUnisender, email: Email, key: str = KEY) -> object:
    async def run() -> object:
        async with UnisenderClient(fake.url, key, timeout_s=2) as client:
            return await client.send(email)
    return asyncio.run(run())


def test_a_send_is_accepted_with_a_job_id_and_a_repeated_idempotence_key_sends_nothing_again(
        fake: FakeUnisender) -> None:
    before = len(fake.sent)
    first = _send(fake, _email(key="11111111-2a5b-4c1e-9d7a-0b6f7e1d2c3a"))
    again = _send(fake, _email(key="11111111-2a5b-4c1e-9d7a-0b6f7e1d2c3a"))
    assert first == again and first.job_id and first.emails == ("anna@romashka.example",) and not first.failed
    sent = fake.sent[before:]
    assert len(sent) == 1 and sent[0]["metadata"] == {"outbox_id": "1"}
    assert sent[0]["subject"] == "Meter { {7} } is offline"  # braces are not a substitution for the simple engine


def test_a_refused_address_comes_back_in_failed_emails(fake: FakeUnisender) -> None:
    sent = _send(fake, _email(to="nobody@invalid.example", key="22222222-2a5b-4c1e-9d7a-0b6f7e1d2c3a"))
    assert sent.failed == {"nobody@invalid.example": "invalid"} and sent.emails == ()


@pytest.mark.parametrize(("fault", "error", "retriable"), [
    (UnisenderFault.BAD_KEY, BadKey, False), (UnisenderFault.QUOTA, QuotaExhausted, False),
    (UnisenderFault.RATE_LIMITED, RateLimited, True), (UnisenderFault.SERVER_ERROR, Unavailable, True),
    (UnisenderFault.MALFORMED, Unavailable, True), (UnisenderFault.ACCEPTED_THEN_ERROR, Unavailable, True)])
def test_each_documented_error_is_its_typed_failure(fake: FakeUnisender, fault: UnisenderFault, error: type,
                                                    retriable: bool) -> None:
    fake.fail(fault, calls=1)
    with pytest.raises(error) as caught:
        _send(fake, _email(key=f"33333333-2a5b-4c1e-9d7a-{abs(hash(fault.value)) % 10**12:012d}"))
    assert caught.value.retriable is retriable and KEY not in str(caught.value)
    if fault is UnisenderFault.RATE_LIMITED:
        assert caught.value.retry_after_s == 1.0


def test_a_wrong_key_is_refused_as_a_bad_key_without_quoting_it(fake: FakeUnisender) -> None:
    with pytest.raises(BadKey) as caught:
        _send(fake, _email(key="44444444-2a5b-4c1e-9d7a-0b6f7e1d2c3a"), key="not-the-key")
    assert "code 102" in str(caught.value) and "not-the-key" not in str(caught.value)  # the answer quotes it


def test_a_timeout_is_unavailable(fake: FakeUnisender) -> None:
    fake.fail(UnisenderFault.TIMEOUT, calls=1)
    fake.slow_s = 5.0
    with pytest.raises(Unavailable, match="no answer"):
        _send(fake, _email(key="55555555-2a5b-4c1e-9d7a-0b6f7e1d2c3a"))


def test_error_envelopes_as_documented_object_or_one_element_list() -> None:
    body = {"status": "error", "code": 102, "message": "Error ID:B4B650AE. Can not decode key 6gsp"}
    assert isinstance(parse_error(401, json.dumps(body).encode(), None), BadKey)
    assert isinstance(parse_error(400, json.dumps([body]).encode(), None), BadKey)  # code 102 whatever the status
    assert isinstance(parse_error(400, b'{"status":"error","code":103,"message":"recipients"}', None), InvalidRequest)
    assert isinstance(parse_error(413, b"", None), InvalidRequest)
    assert isinstance(parse_error(403, b'{"status":"error","code":204,"message":"no rights"}', None), BadKey)


def test_a_webhook_body_verifies_with_our_key_only_and_yields_its_status_events(fake: FakeUnisender) -> None:
    event = fake.status_event("1t00001-0007Le-Fake", "anna@romashka.example", "delivered")
    body = fake.webhook_body([event, {**event, "status": "opened", "url": "https://example.com/a"}])
    assert b"https:\\/\\/example.com" in body  # escaped as Unisender escapes it: verification is on the raw bytes
    events = status_events(verify(body, KEY))
    assert [(e.job_id, e.status) for e in events] == [("1t00001-0007Le-Fake", "delivered"),
                                                      ("1t00001-0007Le-Fake", "opened")]
    assert events[0].detail == "ok 250 2.0.0 Ok: queued" and events[0].event_time.tzinfo is not None
    with pytest.raises(WebhookError, match="does not match"):
        verify(body, "another-key")
    with pytest.raises(WebhookError, match="does not match"):
        verify(body.replace(b"delivered", b"hard_bounced"), KEY)
    with pytest.raises(WebhookError):
        verify(b'{"events_by_user": []}', KEY)


def test_the_real_capture_parses_and_a_single_event_body_too() -> None:
    # external_apis.md §3.6: a real capture (anymail's tests/test_files), single_event = 0.
    capture = (b'{"auth":"b3cb4d6aef9d07095805c39e792e0542","events_by_user":[{"user_id":5960727,"project_name":'
               b'"Testing","project_id":"6862471","events":[{"event_name":"transactional_email_status","event_data":'
               b'{"job_id":"1sn15Z-0007Le-GtVN","email":"unisendergo@anymail.dev","status":"clicked","event_time":'
               b'"2024-09-08 19:56:41","url":"https:\\/\\/example.com","delivery_info":{"user_agent":"Mozilla\\/5.0",'
               b'"ip":"66.179.153.169"}}}]}]}')
    [event] = status_events(json.loads(capture))
    assert (event.job_id, event.email, event.status) == ("1sn15Z-0007Le-GtVN", "unisendergo@anymail.dev", "clicked")
    flat = {"auth": "x", "event_name": "transactional_email_status", "job_id": "j", "email": "e@x.example",
            "status": "sent", "event_time": "2024-09-07 19:27:17"}
    assert [e.status for e in status_events(flat)] == ["sent"]
    with pytest.raises(WebhookError):
        status_events({**flat, "event_time": "yesterday"})
