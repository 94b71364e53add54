"""The supply-contract check client against the local fake of the facade (external_apis.md §2.4)."""
from __future__ import annotations

import pytest

from protocols.gkh.client import GkhClient
from protocols.gkh.contracts import parse_check
from protocols.upstream import BadKey, InvalidRequest, RateLimited, Unavailable, UpstreamError
from simulators.fake_gkh import FakeGkh
from tests.fakes import ACTIVE_INN, ACTIVE_INN_2, GKH_KEY, GkhFault


async def test_a_contract_in_force_is_found_with_its_state(fake_gkh: FakeGkh) -> None:
    async with GkhClient(fake_gkh.url, GKH_KEY) as client:
        found = await client.check("ЭС-12345", ACTIVE_INN)
    assert found is not None and found.in_force
    assert (found.contract_state, found.version_status, found.counterparty_inn) == ("Proceed", "Posted", ACTIVE_INN)
    assert found.supplier_name == 'ПАО "Мосэнергосбыт"'


async def test_expired_and_draft_contracts_are_found_but_not_in_force(fake_gkh: FakeGkh) -> None:
    async with GkhClient(fake_gkh.url, GKH_KEY) as client:
        expired = await client.check("ЭС-EXPIRED", ACTIVE_INN_2)
        draft = await client.check("ЭС-DRAFT", ACTIVE_INN_2)
    assert expired is not None and not expired.in_force and expired.contract_state == "Expired"
    assert draft is not None and not draft.in_force and draft.version_status == "Draft"


async def test_another_organisations_contract_and_an_unknown_number_are_not_found(fake_gkh: FakeGkh) -> None:
    async with GkhClient(fake_gkh.url, GKH_KEY) as client:
        assert await client.check("ЭС-12345", ACTIVE_INN_2) is None
        assert await client.check("ЭС-NOPE", ACTIVE_INN) is None


async def test_an_invalid_request_is_the_callers_input_not_an_outage(fake_gkh: FakeGkh) -> None:
    async with GkhClient(fake_gkh.url, GKH_KEY) as client:
        with pytest.raises(InvalidRequest) as info:
            await client.check("x" * 101, ACTIVE_INN)
    assert not info.value.retriable and "1-100" in info.value.message


@pytest.mark.parametrize(("fault", "error"), [
    (GkhFault.UNAUTHORIZED, BadKey),
    (GkhFault.RATE_LIMITED, RateLimited),
    (GkhFault.SERVER_ERROR, Unavailable),
    (GkhFault.MALFORMED, Unavailable),
])
async def test_each_error_answer_is_typed(fake_gkh: FakeGkh, fault: GkhFault, error: type[UpstreamError]) -> None:
    fake_gkh.fault = fault
    async with GkhClient(fake_gkh.url, GKH_KEY) as client:
        with pytest.raises(error) as info:
            await client.check("ЭС-12345", ACTIVE_INN)
    assert type(info.value) is error and GKH_KEY not in str(info.value)
    if fault is GkhFault.RATE_LIMITED:
        assert info.value.retry_after_s == 20


async def test_a_wrong_key_and_a_timeout(fake_gkh: FakeGkh) -> None:
    async with GkhClient(fake_gkh.url, "wrong") as client:
        with pytest.raises(BadKey):
            await client.check("ЭС-12345", ACTIVE_INN)
    fake_gkh.fault, fake_gkh.slow_s = GkhFault.TIMEOUT, 3.0
    async with GkhClient(fake_gkh.url, GKH_KEY, timeout_s=0.3) as client:
        with pytest.raises(Unavailable) as info:
            await client.check("ЭС-12345", ACTIVE_INN)
    assert info.value.retriable


@pytest.mark.parametrize("raw", [b'{"found": "yes"}', b'{"found": true}', b"[1]",
                                 b'{"found": true, "contract": {"contract_number": "1", "contract_state": "Odd",'
                                 b' "version_status": "Posted"}}'])
def test_answers_outside_the_documented_shape_are_provider_errors(raw: bytes) -> None:
    with pytest.raises(Unavailable):
        parse_check(raw)
