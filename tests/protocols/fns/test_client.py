"""The api-fns client against the local fake speaking the documented formats (external_apis.md §1):
each documented answer becomes the right result or typed error, and the key never leaks into one."""
from __future__ import annotations

import logging

import pytest

from protocols.fns.client import FnsClient
from protocols.fns.egr import parse_egr
from protocols.upstream import BadKey, QuotaExhausted, RateLimited, Unavailable, UpstreamError
from simulators.fake_fns import FakeFns
from tests.fakes import ACTIVE_INN, ENTREPRENEUR_INN, FNS_KEY, LIQUIDATED_INN, UNKNOWN_INN, FnsFault


async def test_a_registered_legal_entity_comes_back_with_its_name_kpp_ogrn_and_address(fake_fns: FakeFns) -> None:
    async with FnsClient(fake_fns.url, FNS_KEY) as client:
        company = await client.egr(ACTIVE_INN)
    assert company is not None
    assert (company.kind, company.inn, company.kpp, company.ogrn) == ("legal_entity", ACTIVE_INN, "773601001",
                                                                      "1027700132195")
    assert company.name == "ОБЩЕСТВО С ОГРАНИЧЕННОЙ ОТВЕТСТВЕННОСТЬЮ Ромашка" and company.short_name == "РОМАШКА"
    assert company.address == "г. Москва, ул. Вавилова, д.19"
    assert company.active and company.status == "Действующее"


async def test_an_entrepreneur_uses_the_innfl_and_ogrnip_keys(fake_fns: FakeFns) -> None:
    async with FnsClient(fake_fns.url, FNS_KEY) as client:
        company = await client.egr(ENTREPRENEUR_INN)
    assert company is not None
    assert (company.kind, company.inn, company.ogrn, company.kpp) == ("entrepreneur", ENTREPRENEUR_INN,
                                                                      "304770000000008", None)
    assert company.name == "Петров Пётр Петрович" and company.active


async def test_a_liquidated_company_is_found_but_not_active(fake_fns: FakeFns) -> None:
    async with FnsClient(fake_fns.url, FNS_KEY) as client:
        company = await client.egr(LIQUIDATED_INN)
    assert company is not None and not company.active and company.status == "Ликвидировано"


async def test_empty_items_is_not_found_and_costs_one_request(fake_fns: FakeFns) -> None:
    before = fake_fns.calls[UNKNOWN_INN]
    async with FnsClient(fake_fns.url, FNS_KEY) as client:
        assert await client.egr(UNKNOWN_INN) is None
    assert fake_fns.calls[UNKNOWN_INN] == before + 1


@pytest.mark.parametrize(("fault", "error"), [
    (FnsFault.BAD_KEY, BadKey),
    (FnsFault.QUOTA, QuotaExhausted),
    (FnsFault.QUOTA_200, QuotaExhausted),
    (FnsFault.RATE_LIMITED, RateLimited),
    (FnsFault.SERVER_ERROR, Unavailable),
    (FnsFault.MALFORMED, Unavailable),
])
async def test_each_provider_error_is_typed_and_never_taken_for_not_found(
        fake_fns: FakeFns, fault: FnsFault, error: type[UpstreamError], caplog: pytest.LogCaptureFixture) -> None:
    fake_fns.fault = fault
    caplog.set_level(logging.DEBUG)
    async with FnsClient(fake_fns.url, FNS_KEY) as client:
        with pytest.raises(error) as info:
            await client.egr(ACTIVE_INN)
    assert type(info.value) is error
    assert FNS_KEY not in str(info.value) and FNS_KEY not in caplog.text
    if fault is FnsFault.RATE_LIMITED:
        assert info.value.retry_after_s == 30 and info.value.retriable


async def test_a_wrong_key_is_refused_by_the_service_as_bad_key(fake_fns: FakeFns) -> None:
    async with FnsClient(fake_fns.url, "not-the-key") as client:
        with pytest.raises(BadKey):
            await client.egr(ACTIVE_INN)


async def test_a_timeout_and_a_closed_port_are_unavailable_without_the_url(fake_fns: FakeFns) -> None:
    fake_fns.fault, fake_fns.slow_s = FnsFault.TIMEOUT, 3.0
    async with FnsClient(fake_fns.url, FNS_KEY, timeout_s=0.3) as client:
        with pytest.raises(Unavailable) as info:
            await client.egr(ACTIVE_INN)
    assert info.value.retriable and "TimeoutError" in str(info.value) and FNS_KEY not in str(info.value)
    async with FnsClient("http://127.0.0.1:9/api", FNS_KEY, timeout_s=2) as client:  # discard port: refused
        with pytest.raises(Unavailable) as info:
            await client.egr(ACTIVE_INN)
    assert FNS_KEY not in str(info.value) and "127.0.0.1" not in str(info.value)


@pytest.mark.parametrize("raw", [b'{"items": [{"XX": {}}]}', b'{"items": {"a": 1}}', b"[]",
                                 b'{"items": [{"\xd0\xae\xd0\x9b": {"\xd0\x98\xd0\x9d\xd0\x9d": "1"}}]}',
                                 b'{"\xd0\x9e\xd1\x88\xd0\xb8\xd0\xb1\xd0\xba\xd0\xb0": "x"}'])
def test_answers_outside_the_documented_shape_are_provider_errors(raw: bytes) -> None:
    with pytest.raises(Unavailable):
        parse_egr(raw)


def test_a_missing_items_key_is_not_found_and_a_status_object_is_read() -> None:
    assert parse_egr(b"{}") is None
    body = ('{"items": [{"ЮЛ": {"ИНН": "7707083893", "НаимПолнЮЛ": "X", "Статус": {"Наим": "Действующее"}}}]}')
    company = parse_egr(body.encode())
    assert company is not None and company.active and company.kpp is None
    body = body.replace("Действующее", "Действующее, в стадии ликвидации")
    company = parse_egr(body.encode())
    assert company is not None and not company.active
