"""The web cabinet: server-rendered pages (Jinja2) at `/`, beside the API on the same origin, enhanced by a
small script (charts with uPlot, the interval switch without a reload, the browser's time zone).

It is served by the monitoring application's ingress (Serve routes one prefix per application and that one
owns `/`): `mount_cabinet(api)` adds its routes and static files, `configure_cabinet(settings)` runs in the
replica. Logins, registrations and refreshes go through the users service's own functions, in-process, so
the rules (checks, throttling, rotation with reuse detection) are the API's; see session.py for cookies and
CSRF. The pages of the other services: admin.py (administration), notifications.py (the inbox), analytics.py
(forecasts and recommendations).
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Form, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.security import OAuth2PasswordRequestForm
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from meterray.auth_backends import auth_backends
from meterray.domain import DeviceStatus
from meterray.intervals import Size
from meterray.quantities import QUANTITIES
from meterray.settings import Settings
from serve_apps.cabinet import admin_data, analytics, data
from serve_apps.cabinet import notifications as inbox
from serve_apps.cabinet.i18n import LANGUAGES, UserLocale, user_locale
from serve_apps.cabinet.session import (
    LANG_COOKIE,
    REFRESH_COOKIE,
    TZ_COOKIE,
    LoginRequired,
    Refreshed,
    Viewer,
    clear_session,
    principal_from_cookie,
    safe_next,
    same_origin,
    set_session,
)
from serve_apps.deps import AppSettings, Db, get_settings
from serve_apps.users import register as register_api
from serve_apps.users import sessions as sessions_api
from serve_apps.users.me import user_out
from serve_apps.users.schemas import RefreshIn, RegisterIn, TokenOut
from serve_apps.users.state import configure_users, get_state
from storage.postgres import cabinet as repo

log = logging.getLogger("meterray.cabinet")

HERE = Path(__file__).parent
UPLOT = HERE / "node_modules" / "uplot" / "dist"  # npm ci (make install): serve_apps/cabinet/package.json
PAGE_SIZES = (25, 50, 100)
YEAR = "year"  # the consumption chart's year of half-hours (ClickHouse aggregates), beside the Size intervals
# Sent with every page: nothing but this origin may run, style, frame or receive a form (no CDN, no inline script).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
                               " frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "Cache-Control": "no-store",
}
# Navigation: (key, path, available). Entries of services other issues build are in place and say "soon".
NAV = (("nav.dashboard", "/", True), ("nav.devices", "/devices", True),
       ("nav.notifications", "/notifications", True), ("nav.recommendations", "/recommendations", True),
       ("nav.admin", "/admin", True))

templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)


def configure_cabinet(settings: Settings) -> None:
    """Per replica: the users service's state (its checks and settings) for logins and registrations here."""
    configure_users(settings, auth_backends(settings))
    if not (UPLOT / "uPlot.iife.min.js").is_file():
        log.warning("the cabinet's chart library is missing (%s): run `make install` (npm ci); pages show tables only",
                    UPLOT)


FORM_PATHS = ("/login", "/signup", "/logout", "/notifications/preferences")
MAX_FORM_BYTES = 16 * 1024  # a sign-up is a few hundred bytes
MAX_ADMIN_FORM_BYTES = 256 * 1024  # the admin pages' forms: a pasted partner payload (admin.MAX_SAMPLE_CHARS)


class _LimitForms:
    """413 before reading a form post larger than any of the cabinet's (or of unknown length): the body is
    parsed before a route's code runs, so the limit sits in front of the routes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        admin = scope["type"] == "http" and scope["path"].startswith("/admin/")
        if scope["type"] == "http" and scope["method"] == "POST" and (scope["path"] in FORM_PATHS or admin):
            limit = MAX_ADMIN_FORM_BYTES if admin else MAX_FORM_BYTES
            length = dict(scope["headers"]).get(b"content-length", b"")
            if not length.isdigit() or int(length) > limit:
                response = PlainTextResponse(f"a form of at most {limit} bytes, with its length",
                                             status_code=413)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def mount_cabinet(api: FastAPI) -> None:
    api.add_middleware(_LimitForms)
    api.include_router(router)
    api.mount("/static/cabinet", StaticFiles(directory=HERE / "static"), name="cabinet-static")
    api.mount("/static/vendor/uplot", StaticFiles(directory=UPLOT, check_dir=False), name="cabinet-uplot")
    api.add_exception_handler(LoginRequired, _to_login)  # type: ignore[arg-type]
    api.add_exception_handler(Refreshed, _refreshed)  # type: ignore[arg-type]
    api.add_exception_handler(data.NotVisible, _not_found)  # type: ignore[arg-type]
    # The admin pages (admin.py) use this module's page helpers: imported here, once this module is loaded.
    from serve_apps.cabinet.admin import admin_router, forbidden
    api.include_router(admin_router)
    api.add_exception_handler(admin_data.Denied, forbidden)  # type: ignore[arg-type]


# ---- helpers

def _loc(request: Request, settings: Settings) -> UserLocale:
    return user_locale(request.cookies.get(LANG_COOKIE), request.headers.get("accept-language"),
                       request.cookies.get(TZ_COOKIE), settings.default_timezone)


def _here(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


async def _viewer(request: Request, db: Db, settings: Settings) -> Viewer:
    """The logged-in viewer; an expired access token is renewed with the refresh cookie (a redirect to the
    same URL brings the new cookies), no session at all leads to the login page."""
    who = principal_from_cookie(request, settings.signing_key)
    if who is not None:
        return Viewer(who)
    refresh = request.cookies.get(REFRESH_COOKIE)
    if not refresh:
        raise LoginRequired(_here(request))
    try:
        out = await sessions_api.refresh(RefreshIn(refresh_token=refresh), db, get_state())
    except (HTTPException, ValidationError):  # expired, revoked or reused: log in again
        raise LoginRequired(_here(request), expired=True) from None
    raise Refreshed(_here(request), out.access_token, out.expires_in, out.refresh_token,
                    settings.refresh_token_ttl_s)


def _page(request: Request, settings: Settings, name: str, status: int = 200, viewer: Viewer | None = None,
          **context: Any) -> HTMLResponse:
    loc = _loc(request, settings)
    # "admin" is in the navigation of those whose role opens an admin section (meterray.access).
    nav = [n for n in NAV if n[1] != "/admin" or (viewer is not None and admin_data.sections(viewer))]
    response = templates.TemplateResponse(request, name, {
        "loc": loc, "t": loc.t, "nav": nav, "path": request.url.path, "viewer": viewer, "here": _here(request),
        "statuses": [s.value for s in DeviceStatus], **context}, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


async def _to_login(request: Request, exc: LoginRequired) -> Response:
    if request.url.path.startswith("/chart/"):  # a script's request: it reloads the page, which logs in
        return JSONResponse({"detail": "log in again"}, status_code=401)
    query = f"?next={exc.next_url}" if exc.next_url != "/" else ""
    if exc.expired:
        query += ("&" if query else "?") + "expired=1"
    response = _see_other("/login" + query)
    clear_session(response, request)
    return response


async def _refreshed(request: Request, exc: Refreshed) -> Response:
    response = RedirectResponse(exc.url, status_code=303 if request.method == "POST" else 307)
    set_session(response, request, exc.access, exc.access_ttl_s, exc.refresh, exc.refresh_ttl_s)
    return response


async def _not_found(request: Request, exc: data.NotVisible) -> Response:
    if request.url.path.startswith("/chart/"):
        return JSONResponse({"detail": "no such device"}, status_code=404)
    admin = request.url.path.startswith("/admin/")  # a connection, partner or user, not a device
    return _page(request, get_settings(), "not_found.html", status=404, what="admin" if admin else "device")


def _origin_refused(request: Request, settings: Settings, template: str, **context: Any) -> HTMLResponse | None:
    if same_origin(request):
        return None
    return _page(request, settings, template, status=403, form_error=_loc(request, settings).t("err.origin"),
                 **context)


# ---- language and time zone (preferences in cookies, no server state)

@router.get("/lang/{lang}")
async def switch_language(lang: str, request: Request, next: str | None = None) -> Response:
    response = _see_other(safe_next(next))
    if lang in LANGUAGES:
        response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, path="/", samesite="lax")
    return response


# ---- login, sign-up, logout

@router.get("/login")
async def login_form(request: Request, settings: AppSettings, next: str | None = None,
                     expired: bool = False) -> HTMLResponse:
    loc = _loc(request, settings)
    return _page(request, settings, "login.html", next=safe_next(next),
                 form_error=loc.t("login.expired") if expired else None, email="")


@router.post("/login")
async def login(request: Request, db: Db, settings: AppSettings, email: Annotated[str, Form()] = "",
                password: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/") -> Response:
    loc = _loc(request, settings)
    refused = _origin_refused(request, settings, "login.html", next=safe_next(next), email=email)
    if refused is not None:
        return refused
    form = OAuth2PasswordRequestForm(username=email, password=password)
    try:
        tokens = await sessions_api.token(form, request, db, get_state())
    except HTTPException as err:
        message = {401: loc.t("login.disabled") if "disabled" in str(err.detail) else loc.t("login.failed"),
                   429: loc.t("login.throttled", s=(err.headers or {}).get("Retry-After", "60"))}.get(
            err.status_code, loc.t("login.failed"))
        return _page(request, settings, "login.html", status=err.status_code, next=safe_next(next),
                     form_error=message, email=email)
    return _logged_in(request, settings, tokens, safe_next(next))


def _logged_in(request: Request, settings: Settings, tokens: TokenOut, next_url: str) -> Response:
    response = _see_other(next_url)
    set_session(response, request, tokens.access_token, tokens.expires_in, tokens.refresh_token,
                settings.refresh_token_ttl_s)
    return response


SIGNUP_FIELDS = ("inn", "email", "password", "contract_number")


@router.get("/signup")
async def signup_form(request: Request, settings: AppSettings) -> HTMLResponse:
    return _page(request, settings, "signup.html", values={}, errors={})


@router.post("/signup")
async def signup(request: Request, db: Db, settings: AppSettings, inn: Annotated[str, Form()] = "",
                 email: Annotated[str, Form()] = "", password: Annotated[str, Form()] = "",
                 contract_number: Annotated[str, Form()] = "") -> Response:
    loc = _loc(request, settings)
    values = {"inn": inn.strip(), "email": email.strip(), "contract_number": contract_number.strip()}
    refused = _origin_refused(request, settings, "signup.html", values=values, errors={})
    if refused is not None:
        return refused
    errors = {f: loc.t("err.missing") for f, v in zip(SIGNUP_FIELDS, (inn, email, password, contract_number),
                                                         strict=True) if not v.strip()}
    if errors:
        return _page(request, settings, "signup.html", status=422, values=values, errors=errors,
                     form_error=loc.t("signup.fix"))
    try:
        body = RegisterIn(inn=values["inn"], email=values["email"], password=password,
                          contract_number=values["contract_number"])
        state = get_state()
        await register_api.register(body, db, state)
    except ValidationError as err:  # longer than any field may be
        errors = {str(e["loc"][-1]): e["msg"] for e in err.errors()}
        return _page(request, settings, "signup.html", status=422, values=values, errors=errors,
                     form_error=loc.t("signup.fix"))
    except HTTPException as err:
        if err.status_code == 503:
            retry = (err.headers or {}).get("Retry-After", "60")
            return _page(request, settings, "signup.html", status=503, values=values, errors={},
                         form_error=loc.t("signup.unavailable", s=retry))
        problems: list[dict[str, Any]] = err.detail if isinstance(err.detail, list) else []
        by_field: dict[str, list[dict[str, Any]]] = {}
        for problem in problems:  # a field may have several (the password rules): one sentence each field
            by_field.setdefault(str(problem["loc"][-1]), []).append(problem)
        errors = {field: loc.t(f"err.{found[0]['type']}", msg="; ".join(loc.detail(str(p["msg"])) for p in found))
                  for field, found in by_field.items()}
        return _page(request, settings, "signup.html", status=err.status_code, values=values, errors=errors,
                     form_error=loc.t("signup.fix"))
    # Registered: log in straight away, through the same login as the form's.
    tokens = await sessions_api.token(OAuth2PasswordRequestForm(username=body.email, password=password), request,
                                      db, state)
    return _logged_in(request, settings, tokens, "/")


@router.post("/logout")
async def logout(request: Request, db: Db, settings: AppSettings) -> Response:
    if not same_origin(request):
        raise HTTPException(403, "the form was not sent from a cabinet page")
    refresh = request.cookies.get(REFRESH_COOKIE)
    if refresh:
        try:
            await sessions_api.logout(RefreshIn(refresh_token=refresh), db)
        except ValidationError:
            pass
    response = _see_other("/login")
    clear_session(response, request)
    return response


# ---- pages

async def _header(db: Db, viewer: Viewer, unread: int | None = None) -> dict[str, Any]:
    """The header of every page: who is logged in, and the navigation's unread badge (one count query;
    a page that has counted already passes its count)."""
    me = await user_out(db, viewer.principal.user_id)
    if me is None:
        raise LoginRequired("/")
    org = me.organisation
    return {"me": me, "org_name": (org.name or org.inn) if org else None,
            "unread": await inbox.unread(db, viewer) if unread is None else unread}


@router.get("/")
async def dashboard(request: Request, db: Db, settings: AppSettings) -> HTMLResponse:
    viewer = await _viewer(request, db, settings)
    loc = _loc(request, settings)
    now = datetime.now(timezone.utc).astimezone(loc.tz)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    org, everything = viewer.principal.organisation_id, viewer.everything
    counts = await repo.status_counts(db, org, everything)
    events = await repo.recent_transitions(db, org, everything, 10)
    totals = await data.totals(db, settings, viewer, month_start) if counts else None
    expected = await analytics.organisation_expected(db, settings, viewer, totals)
    return _page(request, settings, "dashboard.html", viewer=viewer, counts=counts, total=sum(counts.values()),
                 totals=totals, expected=expected, events=events, dashboard_meters=data.DASHBOARD_METERS,
                 **await _header(db, viewer))


@router.get("/devices")
async def devices(request: Request, db: Db, settings: AppSettings,
                  q: Annotated[str, Query(max_length=100)] = "", status: str = "",
                  after: Annotated[str, Query(max_length=200)] = "", limit: int = 50) -> HTMLResponse:
    viewer = await _viewer(request, db, settings)
    status_filter = status if status in {s.value for s in DeviceStatus} else None
    limit = limit if limit in PAGE_SIZES else 50
    org, everything = viewer.principal.organisation_id, viewer.everything
    rows = await repo.device_page(db, org, everything, after=after or None, limit=limit + 1, status=status_filter,
                                  search=q.strip() or None)
    count = await repo.device_count(db, org, everything, status=status_filter, search=q.strip() or None)
    more = len(rows) > limit
    base = {"q": q, "status": status_filter or "", "limit": limit}
    return _page(request, settings, "devices.html", viewer=viewer, rows=rows[:limit], count=count, filters=base,
                 next_after=rows[limit - 1]["id"] if more else None, page_sizes=PAGE_SIZES, paged=bool(after),
                 **await _header(db, viewer))


@router.get("/devices/{device_id}")
async def device_page(device_id: str, request: Request, db: Db, settings: AppSettings, interval: str = "30m",
                      quantity: str = "", period: str = "1d") -> HTMLResponse:
    viewer = await _viewer(request, db, settings)
    row = await data.device(db, viewer, device_id)
    year = interval == YEAR  # the year of half-hours from ClickHouse: the table keeps the last day's
    size = Size(interval) if interval in {s.value for s in Size} else Size.HALF_HOUR
    band = await analytics.device_band(db, settings, viewer, device_id)
    current = await data.current(db, viewer, device_id)
    health = await data.health(db, viewer, device_id)
    try:
        energy = await data.consumption(db, settings, viewer, device_id, size)
    except HTTPException:  # no energy register, or a time zone the tz database lost
        energy = None
    quantities = [r.quantity for r in current.readings] or [data.ACTIVE_IMPORT]
    quantity = quantity if quantity in QUANTITIES else (
        "1-0:1.7.0" if "1-0:1.7.0" in quantities else quantities[0])
    period = period if period in data.ARCHIVE_RANGE else "1d"
    return _page(request, settings, "device.html", viewer=viewer, device=row, current=current, health=health,
                 energy=energy, energy_rows=data.since_first_data(energy) if energy else [],
                 interval=YEAR if year else size.value, intervals=[s.value for s in Size] + [YEAR],
                 band=band, band_today=band.today(datetime.now(timezone.utc)), quantity=quantity,
                 quantities=sorted(set(quantities) | {quantity}), all_quantities=QUANTITIES, period=period,
                 periods=list(data.ARCHIVE_RANGE), **await _header(db, viewer))


@router.get("/chart/devices/{device_id}/consumption")
async def consumption_chart(device_id: str, request: Request, db: Db, settings: AppSettings,
                            interval: str = "30m") -> JSONResponse:
    viewer = await _viewer(request, db, settings)
    if interval == YEAR:
        return JSONResponse(await analytics.year_series(db, settings, viewer, device_id),
                            headers={"Cache-Control": "no-store"})
    if interval not in {s.value for s in Size}:
        raise HTTPException(422, f"interval is one of {', '.join(s.value for s in Size)}, {YEAR}")
    body = await data.consumption(db, settings, viewer, device_id, Size(interval))
    band = await analytics.device_band(db, settings, viewer, device_id)
    return JSONResponse({**data.chart_series(body), "forecast": analytics.band_series(band, Size(interval))},
                        headers={"Cache-Control": "no-store"})


@router.get("/chart/devices/{device_id}/archive")
async def archive_chart(device_id: str, request: Request, db: Db, settings: AppSettings, quantity: str,
                        period: str = "1d") -> JSONResponse:
    viewer = await _viewer(request, db, settings)
    if quantity not in QUANTITIES or period not in data.ARCHIVE_RANGE:
        raise HTTPException(422, f"quantity is an OBIS code, period one of {', '.join(data.ARCHIVE_RANGE)}")
    body = await data.archive(db, viewer, device_id, quantity, period)
    return JSONResponse(data.chart_series(body), headers={"Cache-Control": "no-store"})


# ---- recommendations (the forecasting service's, with the numbers behind them)

@router.get("/recommendations")
async def recommendations_page(request: Request, db: Db, settings: AppSettings, days: int = 28) -> HTMLResponse:
    viewer = await _viewer(request, db, settings)
    days = days if days in analytics.REC_DAYS else 28
    prices = analytics.prices_from(dict(request.query_params))
    org, devices, metered = await analytics.recommendations(db, settings, viewer, days, prices)
    return _page(request, settings, "recommendations.html", viewer=viewer, org=org, advice=devices, metered=metered,
                 shown=analytics.REC_DEVICES, days=days, all_days=analytics.REC_DAYS, prices=prices,
                 **await _header(db, viewer))


# ---- notifications inbox (issue 11): the notifications API's own functions, in-process (notifications.py).
# Every change is a form post (works without a script), refused unless it comes from a cabinet page.

@router.get("/notifications")
async def notifications_page(request: Request, db: Db, settings: AppSettings, cursor: str = "",
                             done: str = "") -> HTMLResponse:
    viewer = await _viewer(request, db, settings)
    return await _inbox_page(request, db, settings, viewer, cursor, done)


async def _inbox_page(request: Request, db: Db, settings: Settings, viewer: Viewer, cursor: str, done: str = "",
                      status: int = 200, prefs_error: str | None = None) -> HTMLResponse:
    listing = await inbox.inbox(db, viewer, cursor or None)
    return _page(request, settings, "notifications.html", status=status, viewer=viewer, inbox=listing,
                 cursor=cursor, prefs=await inbox.preferences(db, viewer), kinds=inbox.KINDS,
                 done=done if done in inbox.DONE else "", prefs_error=prefs_error,
                 **await _header(db, viewer, unread=listing.unread))


def _inbox_refused(request: Request, settings: Settings, status: int, text_key: str) -> HTMLResponse:
    return _page(request, settings, "notifications_notice.html", status=status, text_key=text_key)


@router.post("/notifications/{notification_id}/read")
async def notification_read(notification_id: str, request: Request, db: Db, settings: AppSettings,
                            cursor: str = "") -> Response:
    if not same_origin(request):
        return _inbox_refused(request, settings, 403, "err.origin")
    viewer = await _viewer(request, db, settings)
    if not (notification_id.isdigit() and await inbox.mark_read(db, viewer, int(notification_id))):
        return _page(request, settings, "notifications_notice.html", status=404, viewer=viewer,
                     text_key="notif.not_found", **await _header(db, viewer))
    query = urlencode({"done": "read", **({"cursor": cursor} if cursor else {})})
    return _see_other(f"/notifications?{query}")


@router.post("/notifications/read-all")
async def notifications_read_all(request: Request, db: Db, settings: AppSettings) -> Response:
    if not same_origin(request):
        return _inbox_refused(request, settings, 403, "err.origin")
    viewer = await _viewer(request, db, settings)
    await inbox.mark_all_read(db, viewer)
    return _see_other("/notifications?done=all")


@router.post("/notifications/preferences")
async def notification_preferences(request: Request, db: Db, settings: AppSettings,
                                   in_app: Annotated[str, Form()] = "", email: Annotated[str, Form()] = "",
                                   kinds: Annotated[list[str] | None, Form()] = None) -> Response:
    if not same_origin(request):
        return _inbox_refused(request, settings, 403, "err.origin")
    viewer = await _viewer(request, db, settings)
    try:  # an unchecked box is not sent at all: absent means off
        await inbox.save_preferences(db, viewer, in_app=bool(in_app), email=bool(email), wanted=kinds or [])
    except ValidationError:
        return await _inbox_page(request, db, settings, viewer, "", status=422,
                                 prefs_error=_loc(request, settings).t("notif.prefs.invalid"))
    return _see_other("/notifications?done=prefs#preferences")
