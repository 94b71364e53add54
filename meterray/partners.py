"""The edge of partner configuration: what a person may store as a data partner (HTTP API).

A partner is a list of retrieval paths. Each path says how to ask (URL template, method, headers,
query), how to page through an answer (page number, offset, cursor token, next link), what the
answer is (JSON, CSV, XML) and how its records become readings or device status. Validated once,
here, with messages a person can act on; the models are frozen and travel as they are to the
PartnerActor (pydantic at the edge, and the same immutable value inside).

Secrets (API keys, passwords, client secrets, the webhook secret) are `SecretStr`: never printed,
logged or returned; storage encrypts them at rest (storage/secrets.py) and the API shows `***`.
"""
from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from meterray.config import ConfigError, Identifier, describe
from meterray.quantities import QUANTITIES

MASK = "***"  # how a stored secret is shown; sent back unchanged on PUT it means "keep the stored one"
# Placeholders a URL template, a query value or a header may use; filled in per request (UTC).
PLACEHOLDERS = ("since", "until", "since_ms", "until_ms", "since_s", "until_s")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
FieldPath = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_@$:-]+(\.[A-Za-z0-9_@$:-]+)*$", max_length=200)]
# Unit prefixes a partner may send for the unit meterray keeps (e.g. Wh for an OBIS code in kWh).
UNIT_FACTORS = {"": 1.0, "k": 1e3, "M": 1e6, "m": 1e-3}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NoAuth(_Frozen):
    kind: Literal["none"] = "none"


class ApiKeyAuth(_Frozen):
    kind: Literal["api_key"]
    where: Literal["header", "query"] = "header"
    name: str = Field("X-Api-Key", min_length=1, max_length=100)
    key: SecretStr


class BasicAuth(_Frozen):
    kind: Literal["basic"]
    username: str = Field(min_length=1, max_length=200)
    password: SecretStr


class OAuth2Auth(_Frozen):
    """OAuth 2.0 client credentials grant (RFC 6749 §4.4): the token is fetched and refreshed on expiry
    (or on a 401), client id and secret sent with HTTP basic authentication (§2.3.1)."""

    kind: Literal["oauth2"]
    token_url: str
    client_id: str = Field(min_length=1, max_length=200)
    client_secret: SecretStr
    scope: str | None = None

    @field_validator("token_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v)


Auth = Annotated[NoAuth | ApiKeyAuth | BasicAuth | OAuth2Auth, Field(discriminator="kind")]


class NoPages(_Frozen):
    kind: Literal["none"] = "none"


class PageNumber(_Frozen):
    """`?page=1&per_page=100`: the next page while a page comes back full."""

    kind: Literal["page"]
    param: str = "page"
    size_param: str = "per_page"
    size: int = Field(100, ge=1, le=10_000)
    first: int = Field(1, ge=0)


class Offset(_Frozen):
    """`?offset=0&limit=100`: the next offset while a page comes back full."""

    kind: Literal["offset"]
    param: str = "offset"
    limit_param: str = "limit"
    limit: int = Field(100, ge=1, le=10_000)


class CursorToken(_Frozen):
    """`?cursor=<token>`: the token of the next page is in the answer (`next_field`, or the
    `next_header` for CSV); absent, null or empty on the last page."""

    kind: Literal["cursor"]
    param: str = "cursor"
    next_field: FieldPath | None = "next_cursor"
    next_header: str | None = None


class NextLink(_Frozen):
    """The answer names the URL of the next page: a field of the body, or RFC 8288 `Link: <…>; rel="next"`."""

    kind: Literal["link"]
    next_field: FieldPath | None = None  # None: the Link header


Pagination = Annotated[NoPages | PageNumber | Offset | CursorToken | NextLink, Field(discriminator="kind")]


class ValueField(_Frozen):
    """One value of a wide record: `field` holds the value of `quantity` (OBIS)."""

    quantity: str
    field: FieldPath
    unit: str | None = None  # the unit the partner uses; None: the OBIS code's own
    scale: float = Field(1.0, allow_inf_nan=False)


class ReadingMapping(_Frozen):
    """Records → readings. Long records carry one value each (`quantity` + `value` fields, with an
    optional `quantity_map` of the partner's names → OBIS codes); wide records carry several
    (`values`). `unit` / `scale` are a field path or a constant; a partner unit with a prefix of
    meterray's (Wh for kWh) is converted."""

    device: FieldPath
    timestamp: FieldPath
    quantity: FieldPath | None = None
    quantity_map: dict[str, str] = Field(default_factory=dict)
    value: FieldPath | None = None
    unit: FieldPath | None = None
    scale: float | FieldPath = 1.0
    values: tuple[ValueField, ...] = ()

    @model_validator(mode="after")
    def _shape(self) -> "ReadingMapping":
        long = self.quantity is not None or self.value is not None
        if long == bool(self.values):
            raise ValueError("give either `quantity` and `value` (one value per record) or `values` (several "
                             "per record), not both and not neither")
        if long and (self.quantity is None or self.value is None):
            raise ValueError("one value per record needs both `quantity` and `value` field paths")
        unknown = sorted({*self.quantity_map.values(), *(v.quantity for v in self.values)} - QUANTITIES.keys())
        if unknown:
            raise ValueError(f"unknown OBIS code(s) {unknown}; known codes are listed in meterray.quantities "
                             "(e.g. 1-0:1.8.0 for active energy import in kWh)")
        for v in self.values:
            if v.unit is not None and unit_factor(v.unit, QUANTITIES[v.quantity].unit) is None:
                raise ValueError(f"unit {v.unit!r} cannot be converted to {QUANTITIES[v.quantity].unit!r} "
                                 f"({v.quantity})")
        if isinstance(self.scale, float) and not math.isfinite(self.scale):
            raise ValueError("scale must be a finite number or a field path")
        return self


class StatusMapping(_Frozen):
    """Records → device status. `status` values in `online` mean the device is fine (unless it reports an
    error code, a low battery or tamper); any other value means offline."""

    device: FieldPath
    timestamp: FieldPath
    status: FieldPath
    online: tuple[str, ...] = ("online", "ok", "up")
    error_code: FieldPath | None = None
    no_error: tuple[str, ...] = ("", "0", "none", "ok")
    battery: FieldPath | None = None  # percent
    battery_low_below: float = Field(20.0, ge=0, le=100)
    tamper: FieldPath | None = None  # truthy: the enclosure was opened


class PathConfig(_Frozen):
    name: Identifier
    url: str  # absolute, or relative to the partner's base_url; may use PLACEHOLDERS
    method: Literal["GET", "POST"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)
    pagination: Pagination = Field(default_factory=NoPages)
    format: Literal["json", "csv", "xml"] = "json"
    records: FieldPath | None = None  # where the list of records is (JSON/XML); None: the document itself
    readings: ReadingMapping | None = None
    status: StatusMapping | None = None
    interval_s: float = Field(60.0, ge=1.0, le=86_400.0, allow_inf_nan=False)
    overlap_s: float = Field(300.0, ge=0.0, le=7 * 86_400.0, allow_inf_nan=False)  # late data window
    lag_s: float = Field(0.0, ge=0.0, le=86_400.0, allow_inf_nan=False)  # ask only for data this old
    initial_lookback_s: float = Field(3600.0, ge=0.0, le=366 * 86_400.0, allow_inf_nan=False)
    max_pages: int = Field(1000, ge=1, le=1_000_000)  # per run: a partner that pages forever is stopped

    @model_validator(mode="after")
    def _coherent(self) -> "PathConfig":
        if (self.readings is None) == (self.status is None):
            raise ValueError("a path carries either `readings` or `status` (device status), exactly one")
        used = set(_PLACEHOLDER.findall(self.url))
        for v in [*self.query.values(), *self.headers.values()]:
            used |= set(_PLACEHOLDER.findall(v))
        unknown = sorted(used - set(PLACEHOLDERS))
        if unknown:
            raise ValueError(f"unknown placeholder(s) {unknown} in url/query/headers; use {list(PLACEHOLDERS)}")
        if self.format == "csv":
            p = self.pagination
            if isinstance(p, CursorToken) and p.next_header is None:
                raise ValueError("a CSV answer has no fields for the next cursor: set pagination.next_header")
            if isinstance(p, NextLink) and p.next_field is not None:
                raise ValueError("a CSV answer has no fields for the next link: leave next_field unset "
                                 "(the Link header)")
        return self


class PartnerDevice(_Frozen):
    external_id: str = Field(min_length=1, max_length=200)
    device_id: Identifier


class RateBudget(_Frozen):
    requests_per_minute: float = Field(60.0, gt=0, le=60_000)
    backfill_requests_per_minute: float = Field(10.0, gt=0, le=60_000)  # beside the live schedule


class PartnerConfig(_Frozen):
    partner_id: Identifier
    name: str = Field("", max_length=200)
    base_url: str
    auth: Auth = Field(default_factory=NoAuth)
    webhook_secret: SecretStr | None = None
    rate: RateBudget = Field(default_factory=lambda: RateBudget.model_validate({}))
    timeout_s: float = Field(10.0, ge=0.1, le=300.0, allow_inf_nan=False)
    retries: int = Field(3, ge=0, le=10)
    enabled: bool = True
    devices: tuple[PartnerDevice, ...] = ()
    paths: tuple[PathConfig, ...] = ()
    # How far back the partner can send readings again: a gap in a device's half-hours within this window
    # is asked for as a backfill of the path that carries the quantity (actors/backfill.py). Partner APIs
    # commonly keep days to months of history; null: it keeps none, its gaps are only estimated.
    backfill_window_s: float | None = Field(7 * 86_400.0, ge=60.0, le=366 * 86_400.0, allow_inf_nan=False)

    @field_validator("base_url")
    @classmethod
    def _base(cls, v: str) -> str:
        return _http_url(v)

    @model_validator(mode="after")
    def _coherent(self) -> "PartnerConfig":
        names = [p.name for p in self.paths]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"path name(s) {twice} used more than once")
        ext = [d.external_id for d in self.devices]
        ids = [d.device_id for d in self.devices]
        for what, seq in (("external id", ext), ("device id", ids)):
            dup = sorted({x for x in seq if seq.count(x) > 1})
            if dup:
                raise ValueError(f"{what}(s) {dup} listed more than once in devices")
        return self

    def device_map(self) -> dict[str, str]:
        return {d.external_id: d.device_id for d in self.devices}

    def path(self, name: str) -> PathConfig:
        for p in self.paths:
            if p.name == name:
                return p
        raise KeyError(f"partner {self.partner_id!r} has no path {name!r}; paths: {[p.name for p in self.paths]}")

    def backfill_path(self, quantity: str) -> PathConfig | None:
        """The readings path a backfill of `quantity` (OBIS) walks: the first that surely carries it (a
        `values` entry or a `quantity_map` target), else the first with one value per record (its records
        may name any OBIS code); None when no path can bring it."""
        maybe: PathConfig | None = None
        for p in self.paths:
            m = p.readings
            if m is None:
                continue
            if quantity in m.quantity_map.values() or any(v.quantity == quantity for v in m.values):
                return p
            if maybe is None and m.quantity is not None:
                maybe = p
        return maybe

    def secrets(self) -> dict[str, str]:
        """Every secret by its place in the document (`auth.key`, `webhook_secret`, …)."""
        out: dict[str, str] = {}
        for key in ("key", "password", "client_secret"):
            s = getattr(self.auth, key, None)
            if isinstance(s, SecretStr):
                out[f"auth.{key}"] = s.get_secret_value()
        if self.webhook_secret is not None:
            out["webhook_secret"] = self.webhook_secret.get_secret_value()
        return out

    def public(self) -> dict[str, Any]:
        """The document without secrets (each shown as MASK): what is stored in clear and returned."""
        doc: dict[str, Any] = self.model_dump(mode="json")  # SecretStr dumps as '**********'
        for place in self.secrets():
            _set(doc, place, MASK)
        return doc


def _http_url(v: str) -> str:
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{v!r} is not an http(s) URL with a host")
    return v


def _set(doc: dict[str, Any], place: str, value: Any) -> None:
    *head, last = place.split(".")
    for key in head:
        doc = doc[key]
    doc[last] = value


@lru_cache(maxsize=256)
def unit_factor(unit: str, target: str) -> float | None:
    """The factor that turns a value in `unit` into `target` (Wh → kWh: 0.001), None if it cannot."""
    if unit == target:
        return 1.0
    for p, f in UNIT_FACTORS.items():
        for q, g in UNIT_FACTORS.items():
            base = unit[len(p):]
            if base and unit == p + base and target == q + base:
                return f / g
    return None


def validate_partner(doc: dict[str, Any], stored: "PartnerConfig | dict[str, str] | None" = None) -> PartnerConfig:
    """Check a partner document; every problem is listed at once (ConfigError). A secret sent as MASK is
    replaced by the stored one (`stored`: the stored configuration, or its secrets by place when the
    document is the stored one itself), so a client can send back what it read. Against a stored
    configuration, masks are honoured only while the document sends secrets to the same places
    (base_url and token_url origins): a changed address needs the secrets themselves, or a caller
    could point a partner elsewhere and receive its stored credentials."""
    secrets = stored if isinstance(stored, dict) else {}
    if isinstance(stored, PartnerConfig) and isinstance(doc, dict) and _origins(doc) == _origins(stored.public()):
        secrets = stored.secrets()
    doc = _unmask(doc, secrets)
    what = f"partner {doc.get('partner_id')!r}" if isinstance(doc, dict) and doc.get("partner_id") else "partner"
    try:
        config = PartnerConfig.model_validate(doc)
    except ValidationError as err:
        raise ConfigError(describe(err, what), "partner") from None
    masked = sorted(place for place, value in config.secrets().items() if value == MASK)
    if masked:
        raise ConfigError([f"{what}: {place}: {MASK} keeps the stored secret only while base_url and token_url stay "
                           "the same (and the partner exists); send the secret itself" for place in masked],
                          "partner")
    return config


def _origins(doc: dict[str, Any]) -> tuple[str, str]:
    def origin(url: Any) -> str:
        parts = urlsplit(str(url or ""))
        return f"{parts.scheme}://{parts.netloc}".lower()

    auth = doc.get("auth") if isinstance(doc.get("auth"), dict) else {}
    return origin(doc.get("base_url")), origin(auth.get("token_url") if auth else None)


def _unmask(doc: Any, stored: dict[str, str]) -> Any:
    if not isinstance(doc, dict):
        return doc
    import copy

    out = copy.deepcopy(doc)
    for place, secret in stored.items():
        node: Any = out
        *head, last = place.split(".")
        for key in head:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(last) == MASK:
            node[last] = secret
    return out
