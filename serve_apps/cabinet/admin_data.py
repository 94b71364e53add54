"""What the cabinet's admin pages show and change, through the APIs' own functions called in-process (the
runtime, connections, partners and users APIs), so their rules (roles, organisation scope, validation) are the
APIs': nothing here queries a table the API would, and nothing is checked twice differently.

Who reaches which section is meterray.access: the runtime (runtime:read) and partners (partners:manage) are
platform staff's, users (users:manage) an admin's, connections (devices:write) an admin's or an operator's;
a customer reaches none (a 403 page). An API's refusal is translated once, here: 404 → NotVisible (the
not-found page), 403 → Denied, 409/422 → Problems with each problem placed at its form field when it names one.
"""
from __future__ import annotations

import re
import uuid
from typing import Any

import asyncpg
from fastapi import HTTPException
from pydantic import ValidationError

from meterray.access import Action, Reach, reach
from meterray.identity import Role
from meterray.settings import Settings
from serve_apps.auth import scope_of
from serve_apps.cabinet.data import NotVisible
from serve_apps.cabinet.session import Viewer
from serve_apps.connections import routes as connections_api
from serve_apps.connections.schemas import ConnectionOut, ConnectionPage, DryRunIn, DryRunOut
from serve_apps.monitoring import runtime_routes as runtime_api
from serve_apps.monitoring.runtime import ActorOut, RuntimeOut
from serve_apps.partners import routes as partners_api
from serve_apps.partners.deps import get_cipher
from serve_apps.partners.schemas import DryRunIn as PartnerDryRunIn
from serve_apps.partners.schemas import DryRunOut as PartnerDryRunOut
from serve_apps.partners.schemas import PartnerList, PartnerOut
from serve_apps.users import manage as users_api
from serve_apps.users.schemas import ManagedUserOut, UserCreateIn, UserPage, UserPatchIn
from storage.postgres.devices import available_profiles

PAGE = 50  # connections and users per page (keyset paging, as the APIs page)
RUNTIME_WINDOW_S = 1.0  # between the runtime API's two samples (its rates); the page waits this long
ROLES = tuple(r.value for r in Role)
# The admin sections in the order of the index, each with the action (meterray.access) that opens it.
SECTIONS: tuple[tuple[str, Action], ...] = (("runtime", Action.READ_RUNTIME), ("connections", Action.WRITE_DEVICES),
                                            ("partners", Action.MANAGE_PARTNERS), ("users", Action.MANAGE_USERS))
# The Modbus form's fields, as the connection document names them (meterray.connections).
CONNECTION_FIELDS = ("connection_id", "host", "port", "poll_interval_s", "timeout_s", "device_id", "unit_id",
                     "profile", "name")
# A problem of meterray.config names its field first: "connection 'x': devices[0].unit_id: ..." or
# "connection 'x': timeout_s 1.0 must be shorter than ...".
_PROBLEM = re.compile(r"^(?:connection '[^']*': )?(?:devices\[\d+\]\.)?([a-z_]+)\b[: ]?\s*(.*)$", re.S)


class Denied(Exception):
    """The viewer's role does not open this section or allow this change (a 403 page); `reason` is the API's."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Problems(Exception):
    """An API refused a form (409/422): messages by form field, and those naming no field."""

    def __init__(self, fields: dict[str, str], general: tuple[str, ...] = ()) -> None:
        super().__init__("; ".join([*fields.values(), *general]))
        self.fields, self.general = fields, general


def sections(viewer: Viewer) -> list[str]:
    return [name for name, action in SECTIONS if reach(viewer.principal, action) is not Reach.NONE]


def require(viewer: Viewer, section: str) -> None:
    action = dict(SECTIONS)[section]
    try:
        scope_of(viewer.principal, action)
    except HTTPException as err:
        raise Denied(str(err.detail)) from None


def _refusal(err: HTTPException, fields: tuple[str, ...] = ()) -> Exception:
    if err.status_code == 404:
        return NotVisible(str(err.detail))
    if err.status_code == 403:
        return Denied(str(err.detail))
    detail = err.detail
    if isinstance(detail, list):  # the users API's FastAPI-shaped field errors
        return Problems({str(p["loc"][-1]): str(p["msg"]) for p in detail if str(p["loc"][-1]) in fields},
                        tuple(str(p["msg"]) for p in detail if str(p["loc"][-1]) not in fields))
    if isinstance(detail, dict):  # connections and partners: {"message", "problems": [...]}
        by_field: dict[str, list[str]] = {}
        general: list[str] = []
        for problem in detail.get("problems", []):
            m = _PROBLEM.match(problem)
            if m and m.group(1) in fields:
                by_field.setdefault(m.group(1), []).append(m.group(2) or problem)
            else:
                general.append(problem)
        if not by_field and not general:
            general.append(str(detail.get("message", "")))
        return Problems({k: "; ".join(v) for k, v in by_field.items()}, tuple(general))
    return Problems({}, (str(detail),))


# ---- runtime

async def runtime(db: asyncpg.Pool, settings: Settings, viewer: Viewer) -> RuntimeOut:
    """The runtime API's view; HTTPException 503 (no supervisor, no answer) passes to the page."""
    scope = scope_of(viewer.principal, Action.READ_RUNTIME)
    return await runtime_api.runtime(db=db, _=scope, settings=settings, window_s=RUNTIME_WINDOW_S)


def actor_state(actor: ActorOut) -> str:
    """running (it pings), paused (a sink is down: it stopped consuming) or silent (no ping yet, or lost)."""
    if actor.pid is None:
        return "silent"
    return "paused" if actor.counters.get("paused") else "running"


def last_error(actor: ActorOut) -> str:
    for key in ("last_error", "last_scan_error", "email_last_error"):
        if actor.counters.get(key):
            return str(actor.counters[key])
    return ""


# ---- connections

async def connections(db: asyncpg.Pool, viewer: Viewer, cursor: str | None) -> ConnectionPage:
    try:
        return await connections_api.list_connections(who=viewer.principal, db=db, limit=PAGE, cursor=cursor,
                                                      kind=None)
    except HTTPException as err:
        if err.status_code == 422:  # a cursor that does not decode: the first page
            return await connections_api.list_connections(who=viewer.principal, db=db, limit=PAGE, cursor=None,
                                                          kind=None)
        raise _refusal(err) from None


async def connection(db: asyncpg.Pool, viewer: Viewer, connection_id: str) -> ConnectionOut:
    try:
        return await connections_api.get_connection(connection_id=connection_id, who=viewer.principal, db=db)
    except HTTPException as err:
        raise _refusal(err) from None


async def profiles(db: asyncpg.Pool) -> list[str]:
    """The meter models the database knows: the choices of the form's profile field (the API checks the same)."""
    return await available_profiles(db)


def modbus_document(form: dict[str, str]) -> dict[str, Any]:
    """The form as a connection document with one meter; values go as typed (the API's model parses and
    checks them, numbers included, and says what is wrong)."""
    device: dict[str, Any] = {"device_id": form["device_id"], "unit_id": form["unit_id"], "profile": form["profile"]}
    if form.get("name"):
        device["name"] = form["name"]
    return {"kind": "modbus_tcp", "connection_id": form["connection_id"], "host": form["host"], "port": form["port"],
            "poll_interval_s": form["poll_interval_s"], "timeout_s": form["timeout_s"], "devices": [device]}


async def create_connection(db: asyncpg.Pool, viewer: Viewer, form: dict[str, str]) -> ConnectionOut:
    try:
        return await connections_api.create_connection(who=_writer(viewer), db=db, doc=modbus_document(form))
    except HTTPException as err:
        raise _refusal(err, CONNECTION_FIELDS) from None


async def dry_run_form(db: asyncpg.Pool, viewer: Viewer, form: dict[str, str]) -> DryRunOut:
    """The form's meter read once (the probe), nothing stored."""
    try:
        return await connections_api.dry_run_unsaved(who=_writer(viewer), db=db,
                                                     body=DryRunIn.model_validate({"config": modbus_document(form)}))
    except HTTPException as err:
        raise _refusal(err, CONNECTION_FIELDS) from None


async def dry_run_stored(db: asyncpg.Pool, viewer: Viewer, connection_id: str) -> DryRunOut:
    try:
        return await connections_api.dry_run(connection_id=connection_id, who=_writer(viewer), db=db,
                                             body=DryRunIn.model_validate({}))
    except HTTPException as err:
        raise _refusal(err) from None


async def delete_connection(db: asyncpg.Pool, viewer: Viewer, connection_id: str) -> None:
    try:
        await connections_api.delete_connection(connection_id=connection_id, who=_writer(viewer), db=db)
    except HTTPException as err:
        raise _refusal(err) from None


def _writer(viewer: Viewer) -> Any:
    # The connections API's writes take `require_role(ADMIN, OPERATOR)`: the same check, as a dependency would.
    if viewer.principal.role not in (Role.ADMIN, Role.OPERATOR):
        raise Denied(f"needs the role {Role.ADMIN.value} or {Role.OPERATOR.value}")
    return viewer.principal


# ---- partners (platform staff: partners:manage)

async def partners(db: asyncpg.Pool, viewer: Viewer) -> PartnerList:
    try:
        return await partners_api.list_partners(db=db, f=get_cipher(), _=scope_of(viewer.principal,
                                                                                   Action.MANAGE_PARTNERS))
    except HTTPException as err:
        raise _refusal(err) from None


async def partner(db: asyncpg.Pool, viewer: Viewer, partner_id: str) -> PartnerOut:
    try:
        return await partners_api.get_partner(partner_id=partner_id, db=db, f=get_cipher(),
                                              _=scope_of(viewer.principal, Action.MANAGE_PARTNERS))
    except HTTPException as err:
        raise _refusal(err) from None


async def partner_dry_run(db: asyncpg.Pool, viewer: Viewer, partner_id: str, path: str,
                          sample: str) -> PartnerDryRunOut:
    """What the path's mapping makes of a pasted payload (nothing fetched, nothing written)."""
    try:
        body = PartnerDryRunIn.model_validate({"path": path, "sample": sample})
    except ValidationError as err:
        raise Problems({}, tuple(e["msg"] for e in err.errors())) from None
    try:
        return await partners_api.dry_run(partner_id=partner_id, body=body, db=db, f=get_cipher(),
                                          _=scope_of(viewer.principal, Action.MANAGE_PARTNERS))
    except HTTPException as err:
        if err.status_code == 404 and "has no path" in str(err.detail):
            raise Problems({"path": str(err.detail)}) from None
        raise _refusal(err) from None


# ---- users (users:manage)

USER_FIELDS = ("email", "password", "role")


async def users(db: asyncpg.Pool, viewer: Viewer, cursor: str | None) -> UserPage:
    scope = scope_of(viewer.principal, Action.MANAGE_USERS)
    try:
        return await users_api.list_users(db=db, scope=scope, limit=PAGE, cursor=cursor, organisation_id=None)
    except HTTPException as err:
        if err.status_code == 422:
            return await users_api.list_users(db=db, scope=scope, limit=PAGE, cursor=None, organisation_id=None)
        raise _refusal(err) from None


def _user_id(user_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(user_id)
    except ValueError:
        raise NotVisible(user_id) from None


async def user(db: asyncpg.Pool, viewer: Viewer, user_id: str) -> ManagedUserOut:
    try:
        return await users_api.get_user(user_id=_user_id(user_id), db=db,
                                        scope=scope_of(viewer.principal, Action.MANAGE_USERS))
    except HTTPException as err:
        raise _refusal(err) from None


async def create_user(db: asyncpg.Pool, viewer: Viewer, email: str, password: str, role: str) -> ManagedUserOut:
    """A user of the viewer's organisation (the API's default), with the API's e-mail and password rules."""
    try:
        body = UserCreateIn.model_validate({"email": email, "password": password, "role": role})
    except ValidationError as err:
        raise Problems({str(e["loc"][-1]): str(e["msg"]) for e in err.errors()}) from None
    try:
        return await users_api.create_user(body=body, db=db, who=viewer.principal,
                                           scope=scope_of(viewer.principal, Action.MANAGE_USERS))
    except HTTPException as err:
        raise _refusal(err, USER_FIELDS) from None


async def change_user(db: asyncpg.Pool, viewer: Viewer, user_id: str, role: str | None = None,
                      disabled: bool | None = None) -> ManagedUserOut:
    try:
        body = UserPatchIn.model_validate({k: v for k, v in (("role", role), ("disabled", disabled)) if v is not None})
    except ValidationError as err:
        raise Problems({str(e["loc"][-1]): str(e["msg"]) for e in err.errors()}) from None
    try:
        return await users_api.patch_user(user_id=_user_id(user_id), body=body, db=db, who=viewer.principal,
                                          scope=scope_of(viewer.principal, Action.MANAGE_USERS))
    except HTTPException as err:
        raise _refusal(err, ("role", "disabled")) from None
