"""The fake external services (simulators/fake_fns.py, fake_gkh.py) for tests, on ports of their own
(tests/ports.py)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from simulators.fake_fns import FakeFns, FnsFault, entrepreneur, legal_entity
from simulators.fake_gkh import FakeGkh, GkhFault, contract
from tests.ports import port

FNS_KEY = "fns-test-key-4f1d9c2e7b"  # must never appear in a log or an error text
GKH_KEY = "gkh-test-key-8a6e0b3d51"

# Valid INNs from external_apis.md §1.10's test vectors, each playing one part.
ACTIVE_INN = "7707083893"
ACTIVE_INN_2 = "7736207543"
ACTIVE_INN_3 = "7728168971"
LIQUIDATED_INN = "7830002293"
UNKNOWN_INN = "7701234560"  # valid checksum, not in the register
ENTREPRENEUR_INN = "500100732259"


def populate_fns(fns: FakeFns) -> None:
    fns.add(legal_entity(ACTIVE_INN, "Ромашка", kpp="773601001", ogrn="1027700132195",
                         address="г. Москва, ул. Вавилова, д.19"))
    fns.add(legal_entity(ACTIVE_INN_2, "Лютик", kpp="773601002", ogrn="1027700132195", address="г. Тверь"))
    fns.add(legal_entity(ACTIVE_INN_3, "Василёк", kpp="772801001", ogrn="1027700132195", address="г. Казань"))
    fns.add(legal_entity(LIQUIDATED_INN, "Закрытое", kpp="783001001", ogrn="1027700132195", address="г. СПб",
                         status="Ликвидировано"))
    fns.add(entrepreneur(ENTREPRENEUR_INN, "Петров Пётр Петрович", ogrnip="304770000000008"))


def populate_gkh(gkh: FakeGkh) -> None:
    gkh.add(contract("ЭС-12345", ACTIVE_INN))
    gkh.add(contract("ЭС-22222", ACTIVE_INN_2))
    gkh.add(contract("ЭС-33333", ACTIVE_INN_3))
    gkh.add(contract("ЭС-EXPIRED", ACTIVE_INN_2, state="Expired"))
    gkh.add(contract("ЭС-DRAFT", ACTIVE_INN_2, state="Proceed", version_status="Draft"))
    gkh.add(contract("ИП-777", ENTREPRENEUR_INN))


@contextmanager
def running_fakes(ports: str) -> Iterator[tuple[FakeFns, FakeGkh]]:
    """Both fakes on the two ports of tests/ports.py's entry `ports`, populated, with no fault."""
    fns = FakeFns(port(ports), FNS_KEY)
    gkh = FakeGkh(port(ports) + 1, GKH_KEY)
    populate_fns(fns)
    populate_gkh(gkh)
    fns.start()
    gkh.start()
    try:
        yield fns, gkh
    finally:
        fns.stop()
        gkh.stop()


__all__ = ["FnsFault", "GkhFault", "running_fakes"]


def valid_inn(seed: int) -> str:
    """A 10-digit INN with a correct check digit (weights of external_apis.md §1.10), distinct per seed."""
    body = f"77{seed % 10_000_000:07d}"
    digit = sum(int(c) * w for c, w in zip(body, (2, 4, 10, 3, 5, 9, 4, 6, 8), strict=True)) % 11 % 10
    return body + str(digit)


def add_organisation(fns: FakeFns, gkh: FakeGkh, inn: str) -> str:
    """An active organisation known to both fakes, with contract `ЭС-<inn>`; returns the contract number."""
    fns.add(legal_entity(inn, f"Организация {inn}", kpp="770101001", ogrn="1027700132195", address=f"г. Москва, {inn}"))
    gkh.add(contract(f"ЭС-{inn}", inn))
    return f"ЭС-{inn}"
