"""The users service on the real Serve app, PostgreSQL and the local fakes of api-fns and the contract
check: registration with every check and its refusals, outages, login, tokens, and the security rules."""
from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meterray.identity import Principal, Role
from meterray.settings import Settings
from meterray.tokens import issue_access_token
from simulators.fake_fns import FakeFns
from simulators.fake_gkh import FakeGkh
from tests.conftest import wait_for
from tests.fakes import (
    ACTIVE_INN,
    ACTIVE_INN_2,
    ACTIVE_INN_3,
    FNS_KEY,
    GKH_KEY,
    LIQUIDATED_INN,
    UNKNOWN_INN,
    FnsFault,
    GkhFault,
    add_organisation,
    running_fakes,
    valid_inn,
)
from tests.pipeline.helpers import sql

PASSWORD = "Зелёный-трамвай-42 едет"  # never to be found in a log
SIGNING_KEY = "test-signing-key-" + "x" * 32
AUTH, ME = "/api/v1/auth", "/api/v1/me"


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


class Api:
    def __init__(self, base: str) -> None:
        self.base = base

    def call(self, method: str, path: str, *, body: Any = None, form: dict[str, str] | None = None,
             token: str | None = None, headers: dict[str, str] | None = None,
             raw: bytes | None = None) -> tuple[int, dict[str, str], Any]:
        h = dict(headers or {})
        data = raw
        if body is not None:
            data, h["Content-Type"] = json.dumps(body).encode(), "application/json"
        elif form is not None:
            data, h["Content-Type"] = urllib.parse.urlencode(form).encode(), "application/x-www-form-urlencoded"
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, _lower(resp.headers), json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            payload = err.read()
            try:
                parsed = json.loads(payload or b"null")
            except ValueError:
                parsed = payload.decode("utf-8", "replace")
            return err.code, _lower(err.headers), parsed

    def register(self, inn: str, email: str, contract: str, password: str = PASSWORD,
                 prefix: str = AUTH) -> tuple[int, dict[str, str], Any]:
        return self.call("POST", f"{prefix}/register",
                         body={"inn": inn, "email": email, "password": password, "contract_number": contract})

    def login(self, email: str, password: str = PASSWORD, address: str = "203.0.113.1") -> tuple[int, Any]:
        status, headers, body = self.call("POST", f"{AUTH}/token", form={"username": email, "password": password},
                                          headers={"X-Forwarded-For": address})
        return status, body if status != 429 else (body, headers)


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeFns, FakeGkh]]:
    with running_fakes("fakes-users") as both:
        yield both


@pytest.fixture(scope="module")
def users_settings(database: Settings, fakes: tuple[FakeFns, FakeGkh]) -> Settings:
    fns, gkh = fakes
    # Validated (model_copy would not check, nor turn the keys into SecretStr).
    return Settings(**{**database.model_dump(), **{
        "fns_url": fns.url, "fns_api_key": FNS_KEY, "gkh_url": gkh.url, "gkh_api_key": GKH_KEY,
        "token_signing_key": SIGNING_KEY, "external_timeout_s": 1.5, "trusted_proxies": "127.0.0.1/32",
        "login_max_failures_per_account": 5, "login_max_failures_per_address": 8,
    }})


@pytest.fixture(scope="module")
def api(users_settings: Settings, ray_cluster: None) -> Iterator[Api]:
    from ray import serve

    from meterray.app.runtime import start_users_api

    base = start_users_api(users_settings)
    yield Api(base)
    serve.delete("users")
    serve.delete("users-me")
    serve.delete("users-admin")


@pytest.fixture
def fns(fakes: tuple[FakeFns, FakeGkh]) -> Iterator[FakeFns]:
    yield fakes[0]
    fakes[0].fault = FnsFault.NONE


@pytest.fixture
def gkh(fakes: tuple[FakeFns, FakeGkh]) -> Iterator[FakeGkh]:
    yield fakes[1]
    fakes[1].fault = GkhFault.NONE


def _fields(body: Any) -> list[tuple[str, str]]:
    return [(d["loc"][-1], d["type"]) for d in body["detail"]]


def _organisations(settings: Settings) -> int:
    return int(sql(settings.pg_dsn, "SELECT count(*) AS n FROM auth.organisations")[0]["n"])


def test_registration_stores_the_organisation_as_the_register_knows_it(api: Api, fns: FakeFns,
                                                                       users_settings: Settings) -> None:
    status, _, body = api.register(ACTIVE_INN, "Anna@Romashka.example", "ЭС-12345")
    assert status == 201, body
    org = body["organisation"]
    assert body["email"] == "anna@romashka.example" and body["role"] == "customer"
    assert (org["inn"], org["kpp"], org["ogrn"]) == (ACTIVE_INN, "773601001", "1027700132195")
    assert org["name"] == "ОБЩЕСТВО С ОГРАНИЧЕННОЙ ОТВЕТСТВЕННОСТЬЮ Ромашка"
    assert org["address"] == "г. Москва, ул. Вавилова, д.19" and org["inn_verified_by"] == "api-fns"
    assert org["contracts"] == [{"contract_number": "ЭС-12345", "verified": True, "contract_state": "Proceed",
                                 "version_status": "Posted", "supplier_name": 'ПАО "Мосэнергосбыт"'}]
    stored = sql(users_settings.pg_dsn, "SELECT password_hash FROM auth.users WHERE email = 'anna@romashka.example'")
    assert stored[0]["password_hash"].startswith("$argon2id$") and PASSWORD not in stored[0]["password_hash"]


def test_local_rules_are_checked_first_all_at_once_and_spend_no_quota(api: Api, fns: FakeFns) -> None:
    before = sum(fns.calls.values())
    status, _, body = api.register("7707083894", "not-an-address", "ЭС-1\x00", password="short")
    assert status == 422
    assert _fields(body)[0] == ("inn", "inn_invalid")  # the INN checksum first
    assert {f for f, _ in _fields(body)} == {"inn", "email", "password", "contract_number"}
    assert sum(fns.calls.values()) == before


@pytest.mark.parametrize(("inn", "contract", "field", "kind"), [
    (UNKNOWN_INN, "ЭС-1", "inn", "inn_not_found"),
    (LIQUIDATED_INN, "ЭС-1", "inn", "inn_inactive"),
    (ACTIVE_INN_2, "ЭС-NOPE", "contract_number", "contract_not_found"),
    (ACTIVE_INN_2, "ЭС-33333", "contract_number", "contract_not_found"),  # another organisation's contract
    (ACTIVE_INN_2, "ЭС-EXPIRED", "contract_number", "contract_not_in_force"),
    (ACTIVE_INN_2, "ЭС-DRAFT", "contract_number", "contract_not_in_force"),
])
def test_each_failed_check_is_a_4xx_naming_the_field(api: Api, fns: FakeFns, users_settings: Settings, inn: str,
                                                     contract: str, field: str, kind: str) -> None:
    before = _organisations(users_settings)
    status, _, body = api.register(inn, f"{uuid.uuid4().hex[:8]}@example.ru", contract)
    assert status == 422 and _fields(body) == [(field, kind)], body
    assert _organisations(users_settings) == before


def test_an_email_or_inn_registered_before_is_a_409_naming_it(api: Api) -> None:
    status, _, body = api.register(ACTIVE_INN_3, "vasilek@example.ru", "ЭС-33333")
    assert status == 201, body
    status, _, body = api.register(ACTIVE_INN_3, "other@example.ru", "ЭС-33333")
    assert status == 409 and _fields(body) == [("inn", "already_registered")]
    status, _, body = api.register(valid_inn(1), "VASILEK@example.ru", "ЭС-1")
    assert status == 409 and _fields(body) == [("email", "already_registered")]


@pytest.mark.parametrize("fault", [FnsFault.SERVER_ERROR, FnsFault.RATE_LIMITED, FnsFault.TIMEOUT, FnsFault.MALFORMED,
                                   FnsFault.BAD_KEY, FnsFault.QUOTA])
def test_api_fns_down_is_a_503_with_retry_advice_and_creates_nothing(api: Api, fns: FakeFns, gkh: FakeGkh,
                                                                     users_settings: Settings,
                                                                     fault: FnsFault) -> None:
    inn = valid_inn(100 + list(FnsFault).index(fault))
    contract = add_organisation(fns, gkh, inn)
    fns.fault, fns.slow_s = fault, 5.0
    before = _organisations(users_settings)
    status, headers, body = api.register(inn, f"fns-{fault.value}@example.ru", contract)
    assert status == 503, body
    assert int(headers["retry-after"]) > 0 and body["detail"]["service"] == "api-fns"
    assert "send the same request again" in body["detail"]["message"]
    if fault is FnsFault.RATE_LIMITED:
        assert headers["retry-after"] == "30"  # the provider's own advice is passed on
    assert _organisations(users_settings) == before
    fns.fault = FnsFault.NONE
    status, _, body = api.register(inn, f"fns-{fault.value}@example.ru", contract)
    assert status == 201 and body["organisation"]["inn_verified_by"] == "api-fns"


@pytest.mark.parametrize("fault", [GkhFault.SERVER_ERROR, GkhFault.RATE_LIMITED, GkhFault.TIMEOUT,
                                   GkhFault.MALFORMED, GkhFault.UNAUTHORIZED])
def test_contract_check_down_is_a_503_and_the_retry_does_not_spend_api_fns_quota(
        api: Api, fns: FakeFns, gkh: FakeGkh, users_settings: Settings, fault: GkhFault) -> None:
    inn = valid_inn(200 + list(GkhFault).index(fault))
    contract = add_organisation(fns, gkh, inn)
    gkh.fault, gkh.slow_s = fault, 5.0
    status, headers, body = api.register(inn, f"gkh-{fault.value}@example.ru", contract)
    assert status == 503 and body["detail"]["service"] == "supply-contract check" and "retry-after" in headers
    assert fns.calls[inn] == 1 and _organisations(users_settings) >= 1
    assert not sql(users_settings.pg_dsn, "SELECT 1 FROM auth.organisations WHERE inn = $1", inn)
    gkh.fault = GkhFault.NONE
    status, _, body = api.register(inn, f"gkh-{fault.value}@example.ru", contract)
    assert status == 201, body
    assert fns.calls[inn] == 1  # the register's answer came from the cache


def test_login_me_refresh_rotation_reuse_and_logout(api: Api, users_settings: Settings) -> None:
    status, tokens = api.login("anna@romashka.example")
    assert status == 200, tokens
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == users_settings.access_token_ttl_s
    status, _, me = api.call("GET", ME, token=tokens["access_token"])
    assert status == 200 and me["email"] == "anna@romashka.example" and me["organisation"]["inn"] == ACTIVE_INN

    status, _, second = api.call("POST", f"{AUTH}/refresh", body={"refresh_token": tokens["refresh_token"]})
    assert status == 200 and second["refresh_token"] != tokens["refresh_token"]
    assert api.call("GET", ME, token=second["access_token"])[0] == 200
    # The first refresh token again: reuse. Refused, and the login's current token is revoked with it.
    status, _, body = api.call("POST", f"{AUTH}/refresh", body={"refresh_token": tokens["refresh_token"]})
    assert status == 401 and "already used" in body["detail"]
    assert api.call("POST", f"{AUTH}/refresh", body={"refresh_token": second["refresh_token"]})[0] == 401

    status, third = api.login("anna@romashka.example")
    assert status == 200
    assert api.call("POST", f"{AUTH}/logout", body={"refresh_token": third["refresh_token"]})[0] == 204
    assert api.call("POST", f"{AUTH}/refresh", body={"refresh_token": third["refresh_token"]})[0] == 401
    assert api.call("POST", f"{AUTH}/logout", body={"refresh_token": "never-issued"})[0] == 204


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_tampered_expired_foreign_and_missing_tokens_are_refused(api: Api, users_settings: Settings) -> None:
    status, tokens = api.login("anna@romashka.example")
    assert status == 200
    header, payload, signature = tokens["access_token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    user = uuid.UUID(claims["sub"])
    who = Principal(user, uuid.UUID(claims["org"]), Role.CUSTOMER)
    refused = {
        "tampered": f"{header}.{_b64({**claims, 'role': 'admin'})}.{signature}",
        "expired": issue_access_token(who, SIGNING_KEY, 60, now=time.time() - 3600).token,
        "foreign key": issue_access_token(who, "someone-elses-key-" + "y" * 32, 60).token,
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "refresh token as access": tokens["refresh_token"],
    }
    for what, token in refused.items():
        status, headers, body = api.call("GET", ME, token=token)
        assert status == 401 and headers["www-authenticate"].startswith("Bearer"), (what, body)
    assert api.call("GET", ME)[0] == 401
    assert api.call("GET", ME, token=tokens["access_token"])[0] == 200


def test_sql_injection_attempts_are_refused_with_4xx_and_change_nothing(api: Api, users_settings: Settings) -> None:
    users_before = sql(users_settings.pg_dsn, "SELECT count(*) AS n FROM auth.users")[0]["n"]
    attempts = [
        ("7707083893' OR '1'='1", "inj1@example.ru", "ЭС-1"),
        ("7707083893; DROP TABLE auth.users; --", "inj2@example.ru", "ЭС-1"),
        (valid_inn(300), "x'); DELETE FROM auth.users; --@example.ru", "ЭС-1"),
        (valid_inn(301), "inj3@example.ru", "ЭС-1'; DROP TABLE auth.users; --"),
    ]
    for inn, email, contract in attempts:
        status, _, body = api.register(inn, email, contract)
        assert 400 <= status < 500, (inn, email, contract, status, body)
    for username in ["' OR 1=1 --", "anna@romashka.example' --", "anna@romashka.example'; DROP TABLE auth.users;--"]:
        assert api.login(username, "' OR '1'='1", address="203.0.113.99")[0] == 401
    assert sql(users_settings.pg_dsn, "SELECT count(*) AS n FROM auth.users")[0]["n"] == users_before


def test_oversized_input_is_refused_with_4xx(api: Api) -> None:
    huge = {"inn": ACTIVE_INN, "email": "big@example.ru", "password": "p" * 1_000_000, "contract_number": "ЭС-1"}
    assert api.call("POST", f"{AUTH}/register", body=huge)[0] == 413
    status, _, body = api.register(ACTIVE_INN, "big@example.ru", "ЭС-1", password="p" * 2000)
    assert status == 422 and ("password", "string_too_long") in _fields(body)
    status, _, body = api.register("7" * 40, "big@example.ru", "Э" * 300)
    assert status == 422 and {f for f, _ in _fields(body)} == {"inn", "contract_number"}
    assert api.call("POST", f"{AUTH}/token", form={"username": "a" * 20_000, "password": "x"})[0] == 413
    assert api.login("a" * 400 + "@example.ru", address="203.0.113.98")[0] == 422


def test_logins_are_throttled_per_account_and_per_address(api: Api, fns: FakeFns, gkh: FakeGkh) -> None:
    status, _, body = api.register(valid_inn(400), "throttle@example.ru", add_organisation(fns, gkh, valid_inn(400)))
    assert status == 201, body
    assert api.register(valid_inn(401), "throttle2@example.ru", add_organisation(fns, gkh, valid_inn(401)))[0] == 201
    for _ in range(5):
        assert api.login("throttle@example.ru", "wrong password!", address="203.0.113.10")[0] == 401
    status, (body, headers) = api.login("throttle@example.ru", address="203.0.113.11")  # right password, too late
    assert status == 429 and int(headers["retry-after"]) > 0 and "too many failed logins" in body["detail"]
    # Per address: eight failures on as many unknown accounts block that address only.
    for i in range(8):
        assert api.login(f"nobody{i}@example.ru", "whatever-it-is", address="198.51.100.7")[0] == 401
    assert api.login("throttle2@example.ru", address="198.51.100.7")[0] == 429
    assert api.login("throttle2@example.ru", address="198.51.100.8")[0] == 200


def test_without_api_keys_development_falls_back_and_says_so(api: Api, fns: FakeFns, gkh: FakeGkh,
                                                            users_settings: Settings) -> None:
    from ray import serve

    from serve_apps.users.app import build_users_app

    dev = Settings(**{**users_settings.model_dump(), "fns_api_key": "", "gkh_api_key": "", "gkh_url": ""})
    serve.run(build_users_app(dev), name="users-dev", route_prefix="/dev/auth")
    try:
        calls = sum(fns.calls.values()) + sum(gkh.calls.values())
        status, _, body = api.register(UNKNOWN_INN, "dev@example.ru", "ANY-NUMBER", prefix="/dev/auth")
        assert status == 201, body
        org = body["organisation"]
        assert org["inn_verified_by"] == "checksum" and org["name"] is None
        assert org["contracts"][0]["verified"] is False
        assert sum(fns.calls.values()) + sum(gkh.calls.values()) == calls  # neither service was asked
        status, _, body = api.register("7707083894", "dev2@example.ru", "ANY", prefix="/dev/auth")
        assert status == 422 and _fields(body) == [("inn", "inn_invalid")]  # the checksum still holds
    finally:
        serve.delete("users-dev")
    assert "DEVELOPMENT FALLBACK: METERRAY_FNS_API_KEY is not set" in _ray_logs()


def _ray_logs() -> str:
    import ray._private.worker as worker

    logs = Path(worker._global_node.get_session_dir_path()) / "logs"
    return "\n".join(p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file() and p.suffix in (
        ".log", ".out", ".err"))


def test_passwords_and_api_keys_never_appear_in_logs(api: Api, fns: FakeFns, gkh: FakeGkh) -> None:
    # What could leak: a registration, failed and good logins, and outages of both services whose errors
    # are logged (api-fns takes its key in the URL's query).
    inn = valid_inn(500)
    contract = add_organisation(fns, gkh, inn)
    fns.fault = FnsFault.BAD_KEY
    assert api.register(inn, "logs@example.ru", contract)[0] == 503
    fns.fault, gkh.fault = FnsFault.NONE, GkhFault.SERVER_ERROR
    assert api.register(inn, "logs@example.ru", contract)[0] == 503
    gkh.fault = GkhFault.NONE
    assert api.register(inn, "logs@example.ru", contract)[0] == 201
    assert api.login("logs@example.ru", "wrong password!", address="203.0.113.50")[0] == 401
    assert api.login("logs@example.ru", address="203.0.113.50")[0] == 200
    # The replicas' logs are really read: both outages show up there, with the services' own errors.
    text = str(wait_for(lambda: (lambda t: t if "api-fns: the API key is refused" in t
                                 and "supply-contract check: HTTP 502" in t else None)(_ray_logs()),
                        60, "the outages in the replicas' logs"))
    for secret in (PASSWORD, FNS_KEY, GKH_KEY, SIGNING_KEY, "wrong password!"):
        assert secret not in text, f"{secret!r} found in the Ray logs"


def test_the_docs_authorize_button_logs_in_through_the_password_flow(api: Api) -> None:
    status, _, spec = api.call("GET", f"{ME}/openapi.json")
    assert status == 200
    scheme = spec["components"]["securitySchemes"]["OAuth2PasswordBearer"]
    assert scheme["flows"]["password"]["tokenUrl"] == f"{AUTH}/token"  # absolute: any app's /docs reaches it
    assert spec["paths"]["/"]["get"]["security"] == [{"OAuth2PasswordBearer": []}]
    status, _, spec = api.call("GET", f"{AUTH}/openapi.json")
    form = spec["paths"]["/token"]["post"]["requestBody"]["content"]
    assert "application/x-www-form-urlencoded" in form
