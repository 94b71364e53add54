"""Routers of the connections API; every query lives in storage.postgres.connections.

Modbus and MQTT connections (and a Modbus connection's devices) are managed here as partners are in
serve_apps.partners: a document validated with every problem listed (422), stored as a new version,
applied by the supervisor through the NOTIFY its tables already send. Callers need an access token;
changes and dry runs need the admin or operator role. An organisation sees and changes its own
connections only: another's answers 404, as one that does not exist.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Body, HTTPException, Query, Response
from paho.mqtt.client import topic_matches_sub

from meterray.config import ConfigError
from meterray.connections import ConnectionDoc, Kind, parse_connection
from meterray.domain import Value
from meterray.identity import Principal, Role
from protocols.modbus.probe import DeviceProbe, probe
from protocols.modbus.profiles import PROFILES
from protocols.mqtt.codecs import DecodeError, decoder_for
from serve_apps.auth import CurrentPrincipal, require_role
from serve_apps.connections.schemas import (
    ConnectionOut,
    ConnectionPage,
    DecodedReading,
    DeviceRead,
    DryRunIn,
    DryRunOut,
    FailureOut,
    NoValueOut,
    Sample,
    ValueOut,
    VersionOut,
)
from serve_apps.deps import Db
from serve_apps.monitoring.routes import quality_flags
from serve_apps.paging import decode_cursor, encode_cursor
from storage.postgres import connections as repo
from storage.postgres.devices import available_profiles, registered_device_ids

connections_router = APIRouter(prefix="/api/v1/connections", tags=["connections"])
MAX_PAGE = 1000
Writer = Annotated[Principal, require_role(Role.ADMIN, Role.OPERATOR)]
Document = Annotated[dict[str, Any], Body(description="a connection document (meterray.connections)")]


def _scope(who: Principal) -> repo.Scope:
    if who.organisation_id is None and who.role is not Role.ADMIN:
        raise HTTPException(403, "your account belongs to no organisation: it has no connections")
    return repo.Scope(who.organisation_id, every_organisation=who.organisation_id is None)


def _out(c: repo.StoredConnection) -> ConnectionOut:
    return ConnectionOut(connection_id=c.connection_id, kind=c.kind, organisation_id=c.organisation_id,
                         version=c.version, updated_at=c.updated_at, enabled=c.enabled, config=c.document,
                         problems=c.problems)


def _invalid(err: ConfigError) -> HTTPException:
    return HTTPException(422, {"message": "invalid connection configuration: fix each problem and send it again",
                               "problems": err.problems})


def _conflict(message: str, problems: list[str]) -> HTTPException:
    return HTTPException(409, {"message": message, "problems": problems})


async def _parse(db: Db, doc: Any) -> ConnectionDoc:
    try:
        return parse_connection(doc, await available_profiles(db))
    except ConfigError as err:
        raise _invalid(err) from None


def _owner(who: Principal, doc: ConnectionDoc, current: repo.StoredConnection | None) -> UUID | None:
    """Whose the connection is: the caller's organisation; platform staff may name any (or keep it)."""
    if who.organisation_id is None:  # platform staff
        return doc.organisation_id if doc.organisation_id is not None else (current.organisation_id if current
                                                                             else None)
    if doc.organisation_id not in (None, who.organisation_id):
        raise _invalid(ConfigError(["organisation_id: you can only store connections of your own organisation "
                                    f"({who.organisation_id}); leave it out"], "connection"))
    return who.organisation_id


async def _save(db: Db, who: Principal, doc: ConnectionDoc, current: repo.StoredConnection | None,
                if_version: int | None | bool = False) -> repo.StoredConnection:
    try:
        return await repo.save_connection(db, doc, _owner(who, doc, current), who.user_id, _scope(who),
                                          expect_new=current is None, if_version=if_version)
    except ConfigError as err:
        raise _invalid(err) from None
    except FileExistsError as err:
        raise _conflict(str(err), [f"connection_id: {doc.connection_id!r} is taken"]) from None
    except repo.ConflictError as err:
        raise _conflict(f"connection {doc.connection_id!r} was not saved", err.problems) from None
    except LookupError as err:
        raise HTTPException(404, str(err)) from None


async def _stored(db: Db, who: Principal, connection_id: str) -> repo.StoredConnection:
    stored = await repo.get_connection(db, connection_id, _scope(who))
    if stored is None:
        raise HTTPException(404, f"no connection {connection_id!r}")
    return stored


async def _stored_doc(db: Db, stored: repo.StoredConnection) -> ConnectionDoc:
    try:
        return parse_connection(stored.document, await available_profiles(db))
    except ConfigError as err:  # stored before a rule or a profile changed
        raise _conflict(f"connection {stored.connection_id!r} is stored but today's rules refuse it; PUT a complete, "
                        "valid document to replace it", err.problems) from None


@connections_router.get("", response_model=ConnectionPage)
async def list_connections(
    who: CurrentPrincipal, db: Db,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="connections per page")] = 100,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page; omit for the first")] = None,
    kind: Annotated[Kind | None, Query(description="only connections of this kind")] = None,
) -> ConnectionPage:
    """Modbus and MQTT connections in id order, a page at a time (keyset paging), with their devices."""
    after = decode_cursor(cursor) if cursor else None
    rows = await repo.list_connections(db, _scope(who), after, limit + 1, kind)
    page = rows[:limit]
    return ConnectionPage(connections=[_out(c) for c in page],
                          next_cursor=encode_cursor(page[-1].connection_id) if len(rows) > limit else None)


@connections_router.post("", response_model=ConnectionOut, status_code=201)
async def create_connection(who: Writer, db: Db, doc: Document) -> ConnectionOut:
    """Store a new connection (kind `modbus_tcp` with its devices, or `mqtt`); the supervisor starts polling
    or subscribing within seconds. 409 if the id or one of the device ids is taken."""
    return _out(await _save(db, who, await _parse(db, doc), None))


@connections_router.post("/dry-run", response_model=DryRunOut)
async def dry_run_unsaved(who: Writer, db: Db, body: DryRunIn) -> DryRunOut:
    """Try a connection document without storing it: read each Modbus device once, or decode an MQTT sample."""
    if body.config is None:
        raise _invalid(ConfigError(["config: give the connection document to try"], "connection"))
    return await _dry_run(db, await _parse(db, body.config), body.sample)


@connections_router.get("/{connection_id}", response_model=ConnectionOut)
async def get_connection(connection_id: str, who: CurrentPrincipal, db: Db) -> ConnectionOut:
    return _out(await _stored(db, who, connection_id))


@connections_router.put("/{connection_id}", response_model=ConnectionOut)
async def replace_connection(connection_id: str, who: Writer, db: Db, doc: Document) -> ConnectionOut:
    """Replace a connection's document (a new version); devices it no longer lists are removed."""
    if doc.get("connection_id", connection_id) != connection_id:
        raise _invalid(ConfigError([f"connection_id: {doc.get('connection_id')!r} in the body differs from "
                                    f"{connection_id!r} in the URL; a connection cannot be renamed (create the new "
                                    "one, delete the old)"], "connection"))
    current = await _stored(db, who, connection_id)
    return _out(await _save(db, who, await _parse(db, {**doc, "connection_id": connection_id}), current))


@connections_router.delete("/{connection_id}", status_code=204)
async def delete_connection(connection_id: str, who: Writer, db: Db) -> Response:
    """Remove a connection and, for Modbus, its devices (their readings stay); polling stops within seconds."""
    if not await repo.delete_connection(db, connection_id, _scope(who), who.user_id):
        raise HTTPException(404, f"no connection {connection_id!r}")
    return Response(status_code=204)


@connections_router.get("/{connection_id}/versions", response_model=list[VersionOut])
async def connection_versions(connection_id: str, who: CurrentPrincipal, db: Db) -> list[VersionOut]:
    rows = await repo.versions(db, connection_id, _scope(who))
    if not rows:
        raise HTTPException(404, f"no versions of connection {connection_id!r}")
    return [VersionOut(**{**dict(r), "config": None if r["config"] is None else orjson.loads(r["config"])})
            for r in rows]


@connections_router.post("/{connection_id}/devices", response_model=ConnectionOut, status_code=201)
async def add_device(connection_id: str, who: Writer, db: Db,
                     device: Annotated[dict[str, Any], Body(description="{device_id, unit_id, profile, name}")]
                     ) -> ConnectionOut:
    """Add one meter behind a Modbus connection (a gateway). 409 if its unit id or its device id is taken."""
    current = await _stored(db, who, connection_id)
    if current.kind != "modbus_tcp":
        raise _invalid(ConfigError([f"connection {connection_id!r} is {current.kind}: devices are added to Modbus "
                                    "connections (MQTT devices register with their first message, with "
                                    "auto_register)"], "connection"))
    doc = await _stored_doc(db, current)
    assert doc.modbus is not None
    taken = [d for d in doc.modbus.devices if d.unit_id == device.get("unit_id")]
    if taken:
        raise _conflict(f"unit id {taken[0].unit_id} is taken on connection {connection_id!r}",
                        [f"unit_id: {taken[0].unit_id} is device {taken[0].device_id!r}'s; choose a free unit id "
                         "(the meter's Modbus address)"])
    if device.get("device_id") in doc.device_ids:
        raise _conflict(f"device {device.get('device_id')!r} is on connection {connection_id!r} already",
                        [f"device_id: {device.get('device_id')!r} is taken"])
    changed = {**doc.document(), "devices": [*doc.document()["devices"], device]}
    return _out(await _save(db, who, await _parse(db, changed), current, if_version=current.version))


@connections_router.delete("/{connection_id}/devices/{device_id}", status_code=204)
async def remove_device(connection_id: str, device_id: str, who: Writer, db: Db) -> Response:
    """Remove one meter from a Modbus connection (its readings stay); the last one goes with its connection."""
    current = await _stored(db, who, connection_id)
    doc = await _stored_doc(db, current)
    if device_id not in doc.device_ids:
        raise HTTPException(404, f"no device {device_id!r} on connection {connection_id!r}")
    if len(doc.device_ids) == 1:
        raise _conflict(f"{device_id!r} is the last device of connection {connection_id!r}",
                        [f"a connection needs a device: DELETE /api/v1/connections/{connection_id} instead"])
    document = doc.document()
    changed = {**document, "devices": [d for d in document["devices"] if d["device_id"] != device_id]}
    await _save(db, who, await _parse(db, changed), current, if_version=current.version)
    return Response(status_code=204)


@connections_router.post("/{connection_id}/dry-run", response_model=DryRunOut)
async def dry_run(connection_id: str, who: Writer, db: Db, body: DryRunIn) -> DryRunOut:
    """Read each device of the stored (or the given) configuration once, or decode an MQTT sample with it;
    writes nothing."""
    current = await _stored(db, who, connection_id)
    if body.config is not None:
        doc = await _parse(db, {**body.config, "connection_id": connection_id})
    else:
        doc = await _stored_doc(db, current)
    return await _dry_run(db, doc, body.sample)


async def _dry_run(db: Db, doc: ConnectionDoc, sample: Sample | None) -> DryRunOut:
    if doc.modbus is not None:
        c = doc.modbus
        reads = await probe(c.host, c.port, c.timeout_s, c.devices, PROFILES)
        return DryRunOut(kind=doc.kind, connection_id=c.connection_id, devices=[_read(r) for r in reads])
    assert doc.mqtt is not None
    if sample is None:
        raise _invalid(ConfigError(['sample: give {"topic", "payload"}: the message to decode with this '
                                    "connection's codec"], "connection"))
    conn = doc.mqtt
    payload = sample.payload.encode() if isinstance(sample.payload, str) else orjson.dumps(sample.payload)
    errors: list[str] = []
    if not topic_matches_sub(conn.topic_filter, sample.topic):
        errors.append(f"topic {sample.topic!r} does not match the connection's topic_filter {conn.topic_filter!r}: "
                      "the connection would not receive this message")
    try:
        batches = decoder_for(conn)(sample.topic, payload, int(time.time() * 1000))
    except DecodeError as err:
        errors.append(f"{err} (the message would go to readings.dlq with this reason)")
        batches = []
    known = await registered_device_ids(db, {b.device_id for b in batches})
    unknown = sorted({b.device_id for b in batches} - known)
    if unknown and not conn.auto_register:
        errors.append(f"device(s) {unknown} are not registered and auto_register is off: the message would go to "
                      "readings.dlq; register them or turn auto_register on")
    readings = [DecodedReading(device_id=b.device_id, ts=datetime.fromtimestamp(b.ts_ms / 1000, timezone.utc),
                               ts_ms=b.ts_ms, registered=b.device_id in known, values=[_value(v) for v in b.values])
                for b in batches]
    return DryRunOut(kind=doc.kind, connection_id=conn.connection_id, readings=readings, errors=errors)


def _value(v: Value) -> ValueOut:
    return ValueOut(quantity=v.quantity, value=v.value, unit=v.unit, quality=v.quality,
                    quality_flags=quality_flags(v.quality))


def _read(r: DeviceProbe) -> DeviceRead:
    failure = None if r.failure is None else FailureOut(kind=r.failure.value, detail=r.detail,
                                                        exception_code=r.exception_code, suspect=r.suspect or "",
                                                        hint=r.hint)
    return DeviceRead(device_id=r.device.device_id, unit_id=r.device.unit_id, profile=r.device.profile,
                      ok=r.failure is None, elapsed_ms=r.elapsed_ms, values=[_value(v) for v in r.values],
                      no_value=[NoValueOut(quantity=n.quantity, reason=n.reason) for n in r.no_value], failure=failure)
