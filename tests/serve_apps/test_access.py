"""Access rules (meterray.access) on the real Serve apps and PostgreSQL: every API needs a token, each
organisation sees only its own devices and users (another's by id is a 404), roles limit what may be done,
bad tokens and hostile input are refused with 4xx, and no password or token reaches the logs.

Two organisations own devices registered through storage's save function; their users are created through
`/api/v1/users` and log in through `/api/v1/auth/token` like any client.
"""
from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from meterray.domain import DeviceSpec, ModbusConnection
from meterray.identity import Principal, Role
from meterray.settings import Settings
from meterray.tokens import issue_access_token
from storage.postgres import auth_users
from storage.postgres.devices import save_modbus_connections
from storage.postgres.readings import ReadingsWriter
from tests.auth_headers import bearer
from tests.conftest import wait_for
from tests.fakes import valid_inn
from tests.pipeline.helpers import sql

PASSWORD = "Синий-чайник-77 кипит"  # never to be found in a log
ENERGY = "1-0:1.8.0"


@dataclass(frozen=True)
class Org:
    id: uuid.UUID
    devices: tuple[str, ...]


def call(method: str, url: str, *, body: Any = None, headers: dict[str, str] | None = None,
         form: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    h = dict(headers or {})
    data = raw
    if body is not None:
        data, h["Content-Type"] = json.dumps(body).encode(), "application/json"
    elif form is not None:
        data, h["Content-Type"] = urllib.parse.urlencode(form).encode(), "application/x-www-form-urlencoded"
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        payload = err.read()
        try:
            parsed = json.loads(payload or b"null")
        except ValueError:
            parsed = payload.decode("utf-8", "replace")
        return err.code, {k.lower(): v for k, v in err.headers.items()}, parsed


def _db(settings: Settings, fn: Any, *args: Any, **kwargs: Any) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(settings.pg_dsn)
        try:
            return await fn(conn, *args, **kwargs)
        finally:
            await conn.close()
    return asyncio.run(run())


def _owned_devices(settings: Settings, tag: str, org: uuid.UUID) -> tuple[str, ...]:
    ids = (f"acc-{tag}-1", f"acc-{tag}-2")
    conn = ModbusConnection(f"acc-{tag}", "192.0.2.1", 502, 60.0, 1.0,
                            tuple(DeviceSpec(d, "sdm630", i + 1) for i, d in enumerate(ids)))
    _db(settings, save_modbus_connections, [conn], organisation_id=org)  # how devices get their owner
    sql(settings.pg_dsn, "UPDATE devices.connections SET enabled = false WHERE id = $1", conn.connection_id)
    start = datetime.now(timezone.utc) - timedelta(minutes=10)
    rows = [(d, ENERGY, int((start + timedelta(minutes=i)).timestamp() * 1000), 100.0 + i, "kWh", 0, "test")
            for d in ids for i in range(3)]

    async def write(c: asyncpg.Connection) -> None:
        await ReadingsWriter().write(c, rows)
    _db(settings, write)
    return ids


@pytest.fixture(scope="module")
def env(runtime: dict) -> Iterator[dict[str, Any]]:
    from meterray.app.runtime import start_users_api

    settings: Settings = runtime["settings"]
    start_users_api(settings)  # the run's users apps (another module may have replaced them)
    a = _db(settings, auth_users.create_organisation, valid_inn(9101), "Организация А")
    b = _db(settings, auth_users.create_organisation, valid_inn(9102), "Организация Б")
    yield {"api": runtime["api"], "settings": settings, "a": Org(a, _owned_devices(settings, "a", a)),
           "b": Org(b, _owned_devices(settings, "b", b))}


def _user(env: dict[str, Any], email: str, role: Role, org: uuid.UUID | None) -> dict[str, Any]:
    """A user created by a platform admin through the API."""
    status, _, body = call("POST", f"{env['api']}/api/v1/users", headers=bearer(env["settings"]),
                           body={"email": email, "password": PASSWORD, "role": role.value,
                                 "organisation_id": None if org is None else str(org)})
    assert status == 201, body
    return body  # type: ignore[no-any-return]


def _login(env: dict[str, Any], email: str, password: str = PASSWORD) -> tuple[int, Any]:
    status, _, body = call("POST", f"{env['api']}/api/v1/auth/token", form={"username": email, "password": password})
    return status, body


def _token_of(env: dict[str, Any], email: str) -> dict[str, str]:
    status, body = _login(env, email)
    assert status == 200, body
    return {"Authorization": f"Bearer {body['access_token']}"}


def _protected(env: dict[str, Any], device: str) -> list[tuple[str, str]]:
    return [("GET", "/api/v1/devices"), ("GET", f"/api/v1/devices/{device}/health"),
            ("GET", f"/api/v1/devices/{device}/readings/current"), ("GET", f"/api/v1/devices/{device}/readings"),
            ("GET", f"/api/v1/devices/{device}/consumption"), ("GET", "/api/v1/health/summary"),
            ("GET", "/api/v1/runtime"), ("GET", "/api/v1/partners"), ("POST", "/api/v1/partners"),
            ("GET", "/api/v1/users"), ("POST", "/api/v1/users"), ("PATCH", f"/api/v1/users/{uuid.uuid4()}"),
            ("GET", "/api/v1/me")]


def test_every_api_refuses_a_request_without_a_token(env: dict[str, Any]) -> None:
    for method, path in _protected(env, env["a"].devices[0]):
        status, headers, body = call(method, env["api"] + path, body={} if method != "GET" else None)
        assert status == 401 and headers["www-authenticate"].startswith("Bearer"), (method, path, status, body)
    assert call("GET", f"{env['api']}/healthz")[0] == 200  # liveness stays open for probes


def test_the_monitoring_docs_authorize_button_logs_in_through_the_users_service(env: dict[str, Any]) -> None:
    status, _, spec = call("GET", f"{env['api']}/openapi.json")
    assert status == 200
    scheme = spec["components"]["securitySchemes"]["OAuth2PasswordBearer"]
    assert scheme["flows"]["password"]["tokenUrl"] == "/api/v1/auth/token"
    for path in ("/api/v1/devices", "/api/v1/devices/{device_id}/readings/current", "/api/v1/runtime",
                 "/api/v1/partners"):
        assert spec["paths"][path]["get"]["security"] == [{"OAuth2PasswordBearer": []}], path
    # Partner webhooks authenticate by their HMAC signature, not by a token.
    assert "security" not in spec["paths"]["/api/v1/partners/{partner_id}/webhook"]["post"]
    status, _, spec = call("GET", f"{env['api']}/api/v1/users/openapi.json")
    assert status == 200 and spec["paths"]["/{user_id}"]["patch"]["security"] == [{"OAuth2PasswordBearer": []}]


def test_a_customer_sees_only_its_organisation_and_another_organisations_device_is_a_404(env: dict[str, Any]) -> None:
    api, a, b = env["api"], env["a"], env["b"]
    _user(env, "anna.customer@a.example", Role.CUSTOMER, a.id)
    anna = _token_of(env, "anna.customer@a.example")
    status, _, page = call("GET", f"{api}/api/v1/devices?limit=1000", headers=anna)
    assert status == 200 and sorted(d["id"] for d in page["devices"]) == sorted(a.devices)
    status, _, summary = call("GET", f"{api}/api/v1/health/summary", headers=anna)
    assert status == 200 and summary["devices"] == len(a.devices)
    mine, theirs = a.devices[0], b.devices[0]
    for suffix in ("/health", "/readings/current", "/readings", "/consumption"):
        status, _, body = call("GET", f"{api}/api/v1/devices/{mine}{suffix}", headers=anna)
        assert status == 200, (suffix, body)
        status, _, body = call("GET", f"{api}/api/v1/devices/{theirs}{suffix}", headers=anna)
        assert status == 404 and body["detail"] == f"no device {theirs!r}", (suffix, body)  # as if it did not exist
    status, _, current = call("GET", f"{api}/api/v1/devices/{mine}/readings/current", headers=anna)
    assert [r["value"] for r in current["readings"]] == [102.0]
    # The platform admin sees both organisations' devices (and the ones nobody owns: the simulator's).
    status, _, page = call("GET", f"{api}/api/v1/devices?limit=1000", headers=bearer(env["settings"]))
    assert status == 200 and set(a.devices) | set(b.devices) < {d["id"] for d in page["devices"]}
    # Platform-only APIs: the runtime and partners.
    for path in ("/api/v1/runtime", "/api/v1/partners"):
        status, _, body = call("GET", api + path, headers=anna)
        assert status == 403 and "platform admin" in body["detail"], (path, body)
    assert call("GET", f"{api}/api/v1/devices", headers=bearer(env["settings"], Role.OPERATOR, b.id))[0] == 200


def test_an_organisation_admin_manages_only_its_own_users(env: dict[str, Any]) -> None:
    api, a, b = env["api"], env["a"], env["b"]
    _user(env, "olga.admin@a.example", Role.ADMIN, a.id)
    boris = _user(env, "boris.operator@b.example", Role.OPERATOR, b.id)
    olga = _token_of(env, "olga.admin@a.example")
    status, _, made = call("POST", f"{api}/api/v1/users", headers=olga,
                           body={"email": "Oleg.Operator@A.example", "password": PASSWORD, "role": "operator"})
    assert status == 201 and made["organisation_id"] == str(a.id) and made["email"] == "oleg.operator@a.example"
    status, _, page = call("GET", f"{api}/api/v1/users?limit=2", headers=olga)
    seen, cursor = [u["email"] for u in page["users"]], page["next_cursor"]
    while cursor:
        status, _, page = call("GET", f"{api}/api/v1/users?limit=2&cursor={cursor}", headers=olga)
        seen, cursor = seen + [u["email"] for u in page["users"]], page["next_cursor"]
    expected = [r["email"] for r in sql(env["settings"].pg_dsn, "SELECT email FROM auth.users WHERE"
                                        " organisation_id = $1 ORDER BY email", a.id)]
    assert seen == expected and "oleg.operator@a.example" in seen and "boris.operator@b.example" not in seen
    # Another organisation's user by id: 404 for reading and for changing; creating there or a platform admin: 403.
    assert call("GET", f"{api}/api/v1/users/{boris['id']}", headers=olga)[0] == 404
    status, _, body = call("PATCH", f"{api}/api/v1/users/{boris['id']}", headers=olga, body={"disabled": True})
    assert status == 404 and body["detail"] == f"no user {boris['id']}"
    status, _, body = call("POST", f"{api}/api/v1/users", headers=olga, body={
        "email": "x@b.example", "password": PASSWORD, "role": "customer", "organisation_id": str(b.id)})
    assert status == 403 and "own organisation" in body["detail"]
    status, _, body = call("POST", f"{api}/api/v1/users", headers=olga, body={
        "email": "root@a.example", "password": PASSWORD, "role": "admin", "organisation_id": None})
    assert status == 403 and "platform admins" in body["detail"]
    assert not sql(env["settings"].pg_dsn, "SELECT 1 FROM auth.users WHERE email IN ('x@b.example', 'root@a.example')")
    # Nobody demotes or disables themselves.
    status, _, body = call("PATCH", f"{api}/api/v1/users/{made['id']}", headers=olga, body={"role": "admin"})
    assert status == 200 and body["role"] == "admin"
    oleg = _token_of(env, "oleg.operator@a.example")
    status, _, body = call("PATCH", f"{api}/api/v1/users/{made['id']}", headers=oleg, body={"disabled": True})
    assert status == 409 and "yourself" in body["detail"]


def test_customers_and_operators_cannot_manage_users(env: dict[str, Any]) -> None:
    api, a = env["api"], env["a"]
    target = _user(env, "target@a.example", Role.CUSTOMER, a.id)
    for role in (Role.CUSTOMER, Role.OPERATOR):
        who = bearer(env["settings"], role, a.id)
        status, _, body = call("PATCH", f"{api}/api/v1/users/{target['id']}", headers=who, body={"role": "admin"})
        assert status == 403 and "users:manage" in body["detail"], (role, body)
        assert call("GET", f"{api}/api/v1/users", headers=who)[0] == 403
        assert call("POST", f"{api}/api/v1/users", headers=who, body={
            "email": "nope@a.example", "password": PASSWORD, "role": "admin"})[0] == 403
    assert sql(env["settings"].pg_dsn, "SELECT role FROM auth.users WHERE id = $1", uuid.UUID(target["id"]))[0][0] \
        == "customer"


def test_a_disabled_user_can_no_longer_log_in_or_refresh_and_a_new_role_comes_with_the_next_refresh(
        env: dict[str, Any]) -> None:
    api, a = env["api"], env["a"]
    vera = _user(env, "vera@a.example", Role.CUSTOMER, a.id)
    status, tokens = _login(env, "vera@a.example")
    assert status == 200
    admin = bearer(env["settings"], Role.ADMIN, a.id)  # the organisation's admin
    status, _, body = call("PATCH", f"{api}/api/v1/users/{vera['id']}", headers=admin, body={"role": "operator"})
    assert status == 200 and body["role"] == "operator"
    status, _, fresh = call("POST", f"{api}/api/v1/auth/refresh", body={"refresh_token": tokens["refresh_token"]})
    assert status == 200
    claims = json.loads(base64.urlsafe_b64decode(fresh["access_token"].split(".")[1] + "=="))
    assert claims["role"] == "operator" and claims["org"] == str(a.id)
    status, _, body = call("PATCH", f"{api}/api/v1/users/{vera['id']}", headers=admin, body={"disabled": True})
    assert status == 200 and body["disabled"] is True
    status, _, body = call("POST", f"{api}/api/v1/auth/refresh", body={"refresh_token": fresh["refresh_token"]})
    assert status == 401, body
    status, body = _login(env, "vera@a.example")
    assert status == 401 and "disabled" in body["detail"]
    # Enabled again: logs in.
    assert call("PATCH", f"{api}/api/v1/users/{vera['id']}", headers=admin, body={"disabled": False})[0] == 200
    assert _login(env, "vera@a.example")[0] == 200


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_tampered_expired_and_foreign_tokens_are_refused_by_the_monitoring_api(env: dict[str, Any]) -> None:
    api, settings, a = env["api"], env["settings"], env["a"]
    good = bearer(settings, Role.CUSTOMER, a.id)["Authorization"].removeprefix("Bearer ")
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    who = Principal(uuid.UUID(claims["sub"]), a.id, Role.CUSTOMER)
    refused = {
        "platform admin claimed": f"{header}.{_b64({**claims, 'org': None, 'role': 'admin'})}.{signature}",
        "other organisation claimed": f"{header}.{_b64({**claims, 'org': str(env['b'].id)})}.{signature}",
        "expired": issue_access_token(who, settings.signing_key, 60, now=time.time() - 3600).token,
        "foreign key": issue_access_token(who, "someone-elses-key-" + "y" * 32, 60).token,
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "garbage": "not.a.token",
    }
    for what, token in refused.items():
        for path in ("/api/v1/devices", f"/api/v1/devices/{a.devices[0]}/readings/current"):
            status, headers, body = call("GET", api + path, headers={"Authorization": f"Bearer {token}"})
            assert status == 401 and headers["www-authenticate"].startswith("Bearer"), (what, path, body)
    status, _, body = call("GET", f"{api}/api/v1/devices", headers={"Authorization": f"Bearer {good}"})
    assert status == 200 and {d["id"] for d in body["devices"]} == set(a.devices)


def test_sql_injection_looking_and_oversized_input_gets_4xx_and_changes_nothing(env: dict[str, Any]) -> None:
    api, settings, a = env["api"], env["settings"], env["a"]
    anna = bearer(settings, Role.CUSTOMER, a.id)
    admin = bearer(settings, Role.ADMIN, a.id)
    counts = "SELECT (SELECT count(*) FROM auth.users) AS u, (SELECT count(*) FROM devices.devices) AS d"
    before = sql(settings.pg_dsn, counts)[0]
    q = urllib.parse.quote
    for device in ("x' OR '1'='1", f"{env['b'].devices[0]}' OR organisation_id IS NOT NULL --",
                   "'; DROP TABLE devices.devices; --"):
        status, _, body = call("GET", f"{api}/api/v1/devices/{q(device, safe='')}/readings/current", headers=anna)
        assert status == 404, (device, body)
    for query in ("status=" + q("offline' OR '1'='1"), "cursor=" + q("' OR 1=1 --"), "limit=" + q("1; DROP TABLE x"),
                  "limit=1000000000"):
        assert call("GET", f"{api}/api/v1/devices?{query}", headers=anna)[0] == 422, query
    assert call("GET", f"{api}/api/v1/users/{q(chr(39) + ' OR 1=1 --')}", headers=admin)[0] == 422
    status, _, body = call("POST", f"{api}/api/v1/users", headers=admin, body={
        "email": "x'); DELETE FROM auth.users; --@a.example", "password": PASSWORD, "role": "customer"})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "email"], body
    status, _, body = call("POST", f"{api}/api/v1/users", headers=admin, body={
        "email": "ok@a.example", "password": PASSWORD, "role": "admin' OR '1'='1"})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "role"], body
    # Oversized: a body past the limit is refused before it is read; long fields by their caps.
    huge = json.dumps({"email": "big@a.example", "password": "p" * 1_000_000, "role": "customer"}).encode()
    status, _, _ = call("POST", f"{api}/api/v1/users", headers={**admin, "Content-Type": "application/json"}, raw=huge)
    assert status == 413
    status, _, body = call("POST", f"{api}/api/v1/users", headers=admin, body={
        "email": "big@a.example", "password": "p" * 2000, "role": "customer"})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "password"]
    status, _, body = call("PATCH", f"{api}/api/v1/users/{uuid.uuid4()}", headers=admin, body={"role": "admin",
                                                                                            "organisation_id": "x"})
    assert status == 422  # unknown fields are refused, not ignored
    assert call("GET", f"{api}/api/v1/devices/{'d' * 20_000}/health", headers=anna)[0] in (404, 414, 431)
    assert sql(settings.pg_dsn, counts)[0] == before


def _ray_logs() -> str:
    import ray._private.worker as worker

    logs = Path(worker._global_node.get_session_dir_path()) / "logs"
    return "\n".join(p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file() and p.suffix in (
        ".log", ".out", ".err"))


def _served(text: str) -> tuple[int, int]:
    # Serve's access log lines of the replicas (logs/serve/replica_*.log): "-- POST /api/v1/users 201 12.3ms".
    return text.count("POST /api/v1/auth/register 201"), text.count("POST /api/v1/users 201")


def test_passwords_and_tokens_never_appear_in_logs(env: dict[str, Any]) -> None:
    api = env["api"]
    registered, created = _served(_ray_logs())
    # A registration (development: INN by checksum, contract unverified), a failed and a good login, a refresh
    # and a user created by an admin: each of them carries a password or a token.
    status, _, body = call("POST", f"{api}/api/v1/auth/register", body={
        "inn": valid_inn(9103), "email": "logs@c.example", "password": PASSWORD, "contract_number": "ЭС-LOGS"})
    assert status == 201, body
    assert _login(env, "logs@c.example", "wrong password, surely")[0] == 401
    status, tokens = _login(env, "logs@c.example")
    assert status == 200
    refreshed = call("POST", f"{api}/api/v1/auth/refresh", body={"refresh_token": tokens["refresh_token"]})[2]
    org = uuid.UUID(body["organisation"]["id"])
    other_password = "Другой-пароль-2026 тоже"
    assert call("POST", f"{api}/api/v1/users", headers=bearer(env["settings"], Role.ADMIN, org), body={
        "email": "logs2@c.example", "password": other_password, "role": "operator"})[0] == 201
    # The replicas' logs are really read: this registration and this user creation are logged there.
    def logged() -> str | None:
        text = _ray_logs()
        r, c = _served(text)
        return text if r > registered and c > created else None

    text = str(wait_for(logged, 60, "the registration and the new user in the replicas' logs"))
    secrets = (PASSWORD, other_password, "wrong password, surely", tokens["access_token"], tokens["refresh_token"],
               refreshed["access_token"], refreshed["refresh_token"])
    for secret in secrets:
        assert secret not in text, f"{secret[:12]}… found in the Ray logs"
