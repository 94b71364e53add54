"""The access table (meterray.access): each kind of principal's reach per action, and who may give which role."""
from __future__ import annotations

import uuid

import pytest

from meterray.access import Action, Forbidden, Reach, Scope, may_assign, reach, scope
from meterray.identity import Principal, Role

ORG, OTHER = uuid.uuid4(), uuid.uuid4()
PLATFORM = Principal(uuid.uuid4(), None, Role.ADMIN)
ORG_ADMIN = Principal(uuid.uuid4(), ORG, Role.ADMIN)
OPERATOR = Principal(uuid.uuid4(), ORG, Role.OPERATOR)
CUSTOMER = Principal(uuid.uuid4(), ORG, Role.CUSTOMER)

A, ALL, OWN, NONE = Action, Reach.ALL, Reach.OWN, Reach.NONE


@pytest.mark.parametrize(("who", "expected"), [
    (PLATFORM, {A.READ_DEVICES: ALL, A.WRITE_DEVICES: ALL, A.MANAGE_USERS: ALL, A.MANAGE_PARTNERS: ALL,
                A.READ_RUNTIME: ALL}),
    (ORG_ADMIN, {A.READ_DEVICES: OWN, A.WRITE_DEVICES: OWN, A.MANAGE_USERS: OWN, A.MANAGE_PARTNERS: NONE,
                 A.READ_RUNTIME: NONE}),
    (OPERATOR, {A.READ_DEVICES: OWN, A.WRITE_DEVICES: OWN, A.MANAGE_USERS: NONE, A.MANAGE_PARTNERS: NONE,
                A.READ_RUNTIME: NONE}),
    (CUSTOMER, {A.READ_DEVICES: OWN, A.WRITE_DEVICES: NONE, A.MANAGE_USERS: NONE, A.MANAGE_PARTNERS: NONE,
                A.READ_RUNTIME: NONE}),
])
def test_each_principal_reaches_what_the_table_says(who: Principal, expected: dict[Action, Reach]) -> None:
    assert {a: reach(who, a) for a in Action} == expected


def test_a_scope_is_the_callers_organisation_or_everything_and_none_is_forbidden() -> None:
    assert scope(CUSTOMER, A.READ_DEVICES) == Scope(ORG)
    assert scope(PLATFORM, A.READ_DEVICES).everything
    with pytest.raises(Forbidden, match="users:manage needs one of: admin, platform admin"):
        scope(CUSTOMER, A.MANAGE_USERS)
    with pytest.raises(Forbidden, match="runtime:read needs one of: platform admin"):
        scope(ORG_ADMIN, A.READ_RUNTIME)
    own = Scope(ORG)
    assert own.covers(ORG) and not own.covers(OTHER) and not own.covers(None)  # an unowned device: staff only
    assert Scope(None).covers(None) and Scope(None).covers(OTHER)


def test_a_token_naming_an_operator_without_organisation_reaches_nothing() -> None:
    # auth.users forbids it; a token saying so (a bug elsewhere) must not read as platform staff.
    orphan = Principal(uuid.uuid4(), None, Role.OPERATOR)
    assert all(reach(orphan, a) is NONE for a in Action)


def test_who_may_give_which_role_where() -> None:
    assert may_assign(PLATFORM, Role.ADMIN, None) is None  # a new platform admin
    assert may_assign(PLATFORM, Role.CUSTOMER, OTHER) is None
    assert may_assign(ORG_ADMIN, Role.ADMIN, ORG) is None and may_assign(ORG_ADMIN, Role.OPERATOR, ORG) is None
    assert "platform" in str(may_assign(ORG_ADMIN, Role.ADMIN, None))
    assert "own organisation" in str(may_assign(ORG_ADMIN, Role.CUSTOMER, OTHER))
    assert "belongs to an organisation" in str(may_assign(PLATFORM, Role.OPERATOR, None))
    with pytest.raises(Forbidden):
        may_assign(OPERATOR, Role.CUSTOMER, ORG)
