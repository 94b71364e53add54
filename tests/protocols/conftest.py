from __future__ import annotations

from collections.abc import Iterator

import pytest

from simulators.fake_fns import FakeFns
from simulators.fake_gkh import FakeGkh
from tests.fakes import FnsFault, GkhFault, running_fakes


@pytest.fixture(scope="session")
def fakes() -> Iterator[tuple[FakeFns, FakeGkh]]:
    with running_fakes("fakes-protocols") as both:
        yield both


@pytest.fixture
def fake_fns(fakes: tuple[FakeFns, FakeGkh]) -> Iterator[FakeFns]:
    fns = fakes[0]
    fns.fault, fns.slow_s = FnsFault.NONE, 30.0
    yield fns
    fns.fault = FnsFault.NONE


@pytest.fixture
def fake_gkh(fakes: tuple[FakeFns, FakeGkh]) -> Iterator[FakeGkh]:
    gkh = fakes[1]
    gkh.fault, gkh.slow_s = GkhFault.NONE, 30.0
    yield gkh
    gkh.fault = GkhFault.NONE
