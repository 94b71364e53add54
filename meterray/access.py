"""Who may do what, in one table: the access rules every API applies. Pure.

A principal's reach for an action is one of NONE (refused: 403), OWN (only its organisation's objects:
every query of that action carries `WHERE organisation_id = <theirs>`) or ALL (platform staff: no filter).
An object outside the reach answers 404 like one that does not exist, so ids of other organisations
cannot be probed.

| who                                  | devices:read | devices:write | users:manage | partners:manage | runtime:read |
|--------------------------------------|--------------|---------------|--------------|-----------------|--------------|
| platform admin (admin, no org)       | ALL          | ALL           | ALL          | ALL             | ALL          |
| organisation admin                   | OWN          | OWN           | OWN          | NONE            | NONE         |
| operator                             | OWN          | OWN           | NONE         | NONE            | NONE         |
| customer                             | OWN          | NONE          | NONE         | NONE            | NONE         |

- devices:read: devices, their health, current readings, the archive, consumption, the fleet summary.
- devices:write: registering and configuring devices (today the CLI and storage's save functions; an HTTP
  endpoint that writes devices must check this action).
- users:manage: `/api/v1/users`. An organisation admin manages its own organisation's users and can
  never create or promote a platform admin (a user without an organisation).
- partners:manage: data partners are platform-wide integrations (one partner delivers meters of many
  organisations, and `partners.partners` has no owner), so only platform staff configure them. Their
  webhooks are authenticated by the partner's HMAC signature, not by an access token.
- runtime:read: the ingestion runtime (actors, Kafka lag, the fleet's device states) is the platform's.

Devices nobody owns (organisation_id NULL: auto-registered MQTT meters, partner meters, devices registered
without `--organisation`) are seen by platform staff only.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from uuid import UUID

from meterray.identity import Principal, Role


class Action(str, enum.Enum):
    READ_DEVICES = "devices:read"
    WRITE_DEVICES = "devices:write"
    MANAGE_USERS = "users:manage"
    MANAGE_PARTNERS = "partners:manage"
    READ_RUNTIME = "runtime:read"


class Reach(enum.Enum):
    NONE = "none"
    OWN = "own organisation"
    ALL = "all organisations"


PLATFORM = "platform admin"  # the row of an admin without an organisation

_A = Action
POLICY: dict[str, dict[Action, Reach]] = {
    PLATFORM: {a: Reach.ALL for a in Action},
    Role.ADMIN.value: {_A.READ_DEVICES: Reach.OWN, _A.WRITE_DEVICES: Reach.OWN, _A.MANAGE_USERS: Reach.OWN},
    Role.OPERATOR.value: {_A.READ_DEVICES: Reach.OWN, _A.WRITE_DEVICES: Reach.OWN},
    Role.CUSTOMER.value: {_A.READ_DEVICES: Reach.OWN},
}


class Forbidden(Exception):
    """The principal's role does not allow the action at all (HTTP 403); `reason` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Scope:
    """Which organisations' objects an allowed action reaches: one, or (organisation_id None) every one."""

    organisation_id: UUID | None

    @property
    def everything(self) -> bool:
        return self.organisation_id is None

    def covers(self, organisation_id: UUID | None) -> bool:
        """Whether an object owned by `organisation_id` (None: nobody) is within this scope."""
        return self.everything or (organisation_id is not None and organisation_id == self.organisation_id)


def row_of(who: Principal) -> str:
    return PLATFORM if who.role is Role.ADMIN and who.organisation_id is None else who.role.value


def reach(who: Principal, action: Action) -> Reach:
    if who.role is not Role.ADMIN and who.organisation_id is None:
        return Reach.NONE  # cannot exist (auth.users' check); a token claiming it reaches nothing
    return POLICY[row_of(who)].get(action, Reach.NONE)


def scope(who: Principal, action: Action) -> Scope:
    """The scope of `action` for `who`; raises Forbidden when the role does not allow it."""
    r = reach(who, action)
    if r is Reach.NONE:
        allowed = sorted(row for row, actions in POLICY.items() if actions.get(action, Reach.NONE) is not Reach.NONE)
        raise Forbidden(f"{action.value} needs one of: {', '.join(allowed)}")
    return Scope(None if r is Reach.ALL else who.organisation_id)


def may_assign(who: Principal, role: Role, organisation_id: UUID | None) -> str | None:
    """Why `who` (allowed users:manage) may not give a user `role` in `organisation_id`, or None if it may.
    Only platform staff create platform admins (admin without an organisation) or act across organisations;
    operators and customers always belong to an organisation (auth.users' check says the same)."""
    if organisation_id is None and role is not Role.ADMIN:
        return f"a {role.value} belongs to an organisation: give organisation_id"
    s = scope(who, Action.MANAGE_USERS)
    if organisation_id is None and not s.everything:
        return "only platform staff create platform admins (users without an organisation)"
    if not s.covers(organisation_id):
        return "an organisation admin manages only its own organisation's users"
    return None
