"""The cabinet's admin pages at /admin: the runtime's status, connections (add a Modbus meter with a dry run,
delete), partners (a dry run of a pasted payload) and users (create, change role, disable). Each page calls its
API's functions in-process through admin_data (the APIs' roles, scopes and validation); every form post is
refused unless it comes from a cabinet page (session.same_origin), like the cabinet's other forms.

Mounted by app.mount_cabinet (this module uses app's page helpers, so it is imported there, not at app's top).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request, Response
from fastapi.responses import HTMLResponse

from meterray.quantities import QUANTITIES
from serve_apps.cabinet import admin_data
from serve_apps.cabinet.admin_data import Denied, Problems
from serve_apps.cabinet.app import _header, _loc, _page, _see_other, _viewer
from serve_apps.cabinet.session import Viewer, same_origin
from serve_apps.deps import AppSettings, Db, get_settings

admin_router = APIRouter(include_in_schema=False)
MAX_SAMPLE_CHARS = 200_000  # a pasted partner payload (the form's limit is MAX_ADMIN_FORM_BYTES in app.py)
# The Modbus form's starting values: the Modbus TCP port (Modbus Messaging on TCP/IP v1.0b §4.1), unit 1.
NEW_CONNECTION = {"connection_id": "", "host": "", "port": "502", "poll_interval_s": "10", "timeout_s": "1",
                  "device_id": "", "unit_id": "1", "profile": "", "name": ""}


async def forbidden(request: Request, exc: Denied) -> Response:
    """A 403 page saying what the viewer's role lacks (the API's reason), with a nav fitting the role."""
    viewer, header = getattr(request.state, "cabinet", (None, {}))  # set by _admin once the viewer is known
    return _page(request, get_settings(), "forbidden.html", status=403, viewer=viewer, reason=exc.reason,
                 sections=[], **header)


async def _admin(request: Request, db: Db, settings: AppSettings, section: str | None = None) -> tuple[Viewer,
                                                                                                      dict[str, Any]]:
    """The viewer (logged in) allowed into `section` (or into any admin section for the index)."""
    viewer = await _viewer(request, db, settings)
    header = await _header(db, viewer)
    request.state.cabinet = (viewer, header)
    allowed = admin_data.sections(viewer)
    if section is None and not allowed:
        raise Denied(_loc(request, settings).t("admin.denied.none"))
    if section is not None:
        admin_data.require(viewer, section)
    if request.method == "POST" and not same_origin(request):  # CSRF (session.py): only a cabinet page's form
        raise Denied(_loc(request, settings).t("err.origin"))
    loc = _loc(request, settings)
    return viewer, {"sections": allowed, "section": section or "index", "all_quantities": QUANTITIES,
                    "role_labels": {r: loc.t(f"role.{r}") for r in admin_data.ROLES}, "from_ms": _from_ms, **header}


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


# ---- index and runtime

@admin_router.get("/admin")
async def index(request: Request, db: Db, settings: AppSettings) -> HTMLResponse:
    viewer, ctx = await _admin(request, db, settings)
    return _page(request, settings, "admin.html", viewer=viewer, **ctx)


@admin_router.get("/admin/runtime")
async def runtime(request: Request, db: Db, settings: AppSettings) -> HTMLResponse:
    viewer, ctx = await _admin(request, db, settings, "runtime")
    try:
        view, error = await admin_data.runtime(db, settings, viewer), None
    except HTTPException as err:  # 503: the runtime is not running or did not answer
        view, error = None, str(err.detail)
    return _page(request, settings, "admin_runtime.html", status=503 if error else 200, viewer=viewer, view=view,
                 error=error, state_of=admin_data.actor_state, last_error_of=admin_data.last_error, **ctx)


# ---- connections

async def _connections_page(request: Request, db: Db, settings: AppSettings, viewer: Viewer, ctx: dict[str, Any],
                            cursor: str | None = None, form: dict[str, str] | None = None, status: int = 200,
                            **extra: Any) -> HTMLResponse:
    page = await admin_data.connections(db, viewer, cursor)
    return _page(request, settings, "admin_connections.html", status=status, viewer=viewer, page=page,
                 paged=bool(cursor), form=form or NEW_CONNECTION, profiles=await admin_data.profiles(db),
                 errors=extra.pop("errors", {}), **extra, **ctx)


@admin_router.get("/admin/connections")
async def connections(request: Request, db: Db, settings: AppSettings, cursor: str = "") -> HTMLResponse:
    viewer, ctx = await _admin(request, db, settings, "connections")
    return await _connections_page(request, db, settings, viewer, ctx, cursor or None,
                                   deleted=request.query_params.get("deleted"))


@admin_router.post("/admin/connections")
async def add_connection(request: Request, db: Db, settings: AppSettings,
                         action: Annotated[str, Form()] = "save", connection_id: Annotated[str, Form()] = "",
                         host: Annotated[str, Form()] = "", port: Annotated[str, Form()] = "",
                         poll_interval_s: Annotated[str, Form()] = "", timeout_s: Annotated[str, Form()] = "",
                         device_id: Annotated[str, Form()] = "", unit_id: Annotated[str, Form()] = "",
                         profile: Annotated[str, Form()] = "", name: Annotated[str, Form()] = "") -> Response:
    """`action` dry-run: read the form's meter once and show it; save: store the connection (the API's create)."""
    viewer, ctx = await _admin(request, db, settings, "connections")
    form = {k: v.strip() for k, v in (("connection_id", connection_id), ("host", host), ("port", port),
                                      ("poll_interval_s", poll_interval_s), ("timeout_s", timeout_s),
                                      ("device_id", device_id), ("unit_id", unit_id), ("profile", profile),
                                      ("name", name))}
    try:
        if action == "dry-run":
            run = await admin_data.dry_run_form(db, viewer, form)
            return await _connections_page(request, db, settings, viewer, ctx, form=form, dry_run=run)
        saved = await admin_data.create_connection(db, viewer, form)
    except Problems as p:
        return await _connections_page(request, db, settings, viewer, ctx, form=form, status=422, errors=p.fields,
                                       form_problems=p.general)
    return _see_other(f"/admin/connections/{saved.connection_id}?saved=1")


@admin_router.get("/admin/connections/{connection_id}")
async def connection(connection_id: str, request: Request, db: Db, settings: AppSettings) -> HTMLResponse:
    viewer, ctx = await _admin(request, db, settings, "connections")
    found = await admin_data.connection(db, viewer, connection_id)
    return _page(request, settings, "admin_connection.html", viewer=viewer, c=found,
                 saved=request.query_params.get("saved") == "1", **ctx)


@admin_router.post("/admin/connections/{connection_id}/dry-run")
async def connection_dry_run(connection_id: str, request: Request, db: Db, settings: AppSettings) -> HTMLResponse:
    viewer, ctx = await _admin(request, db, settings, "connections")
    found = await admin_data.connection(db, viewer, connection_id)
    run = await admin_data.dry_run_stored(db, viewer, connection_id)
    return _page(request, settings, "admin_connection.html", viewer=viewer, c=found, dry_run=run, **ctx)


@admin_router.post("/admin/connections/{connection_id}/delete")
async def delete_connection(connection_id: str, request: Request, db: Db, settings: AppSettings) -> Response:
    viewer, _ = await _admin(request, db, settings, "connections")
    await admin_data.delete_connection(db, viewer, connection_id)
    return _see_other(f"/admin/connections?deleted={connection_id}")


# ---- partners

@admin_router.get("/admin/partners")
async def partners(request: Request, db: Db, settings: AppSettings) -> HTMLResponse:
    viewer, ctx = await _admin(request, db, settings, "partners")
    listed = await admin_data.partners(db, viewer)
    return _page(request, settings, "admin_partners.html", viewer=viewer, listed=listed, **ctx)


@admin_router.get("/admin/partners/{partner_id}")
async def partner(partner_id: str, request: Request, db: Db, settings: AppSettings) -> HTMLResponse:
    viewer, ctx = await _admin(request, db, settings, "partners")
    found = await admin_data.partner(db, viewer, partner_id)
    return _page(request, settings, "admin_partner.html", viewer=viewer, p=found, chosen_path="", sample="", errors={},
                 **ctx)


@admin_router.post("/admin/partners/{partner_id}/dry-run")
async def partner_dry_run(partner_id: str, request: Request, db: Db, settings: AppSettings,
                          path: Annotated[str, Form()] = "", sample: Annotated[str, Form()] = "") -> HTMLResponse:
    viewer, ctx = await _admin(request, db, settings, "partners")
    found = await admin_data.partner(db, viewer, partner_id)
    loc = _loc(request, settings)
    errors: dict[str, str] = {}
    if not sample.strip():
        errors["sample"] = loc.t("err.missing")
    elif len(sample) > MAX_SAMPLE_CHARS:
        errors["sample"] = loc.t("admin.partner.sample_too_long", n=MAX_SAMPLE_CHARS)
    run = None
    general: tuple[str, ...] = ()
    if not errors:
        try:
            run = await admin_data.partner_dry_run(db, viewer, partner_id, path, sample)
        except Problems as p:
            errors, general = p.fields, p.general
    return _page(request, settings, "admin_partner.html", status=422 if errors or general else 200, viewer=viewer,
                 p=found, chosen_path=path, sample=sample, errors=errors, form_problems=general, dry_run=run, **ctx)


# ---- users

async def _users_page(request: Request, db: Db, settings: AppSettings, viewer: Viewer, ctx: dict[str, Any],
                      cursor: str | None = None, status: int = 200, **extra: Any) -> HTMLResponse:
    page = await admin_data.users(db, viewer, cursor)
    extra.setdefault("values", {"email": "", "role": "customer"})
    extra.setdefault("errors", {})
    return _page(request, settings, "admin_users.html", status=status, viewer=viewer, page=page, paged=bool(cursor),
                 roles=admin_data.ROLES, **extra, **ctx)


@admin_router.get("/admin/users")
async def users(request: Request, db: Db, settings: AppSettings, cursor: str = "") -> HTMLResponse:
    viewer, ctx = await _admin(request, db, settings, "users")
    return await _users_page(request, db, settings, viewer, ctx, cursor or None)


@admin_router.post("/admin/users")
async def create_user(request: Request, db: Db, settings: AppSettings, email: Annotated[str, Form()] = "",
                      password: Annotated[str, Form()] = "", role: Annotated[str, Form()] = "") -> Response:
    viewer, ctx = await _admin(request, db, settings, "users")
    loc = _loc(request, settings)
    values = {"email": email.strip(), "role": role}
    missing = {f: loc.t("err.missing") for f, v in (("email", email), ("password", password), ("role", role))
               if not v.strip()}
    if missing:
        return await _users_page(request, db, settings, viewer, ctx, status=422, values=values, errors=missing)
    try:
        made = await admin_data.create_user(db, viewer, values["email"], password, role)
    except Problems as p:
        errors = {f: loc.detail(m) for f, m in p.fields.items()}
        return await _users_page(request, db, settings, viewer, ctx, status=422, values=values, errors=errors,
                                 form_problems=p.general)
    return _see_other(f"/admin/users/{made.id}?created=1")


@admin_router.get("/admin/users/{user_id}")
async def user(user_id: str, request: Request, db: Db, settings: AppSettings) -> HTMLResponse:
    viewer, ctx = await _admin(request, db, settings, "users")
    found = await admin_data.user(db, viewer, user_id)
    return _page(request, settings, "admin_user.html", viewer=viewer, u=found, roles=admin_data.ROLES,
                 done=request.query_params.get("done", ""), **ctx)


@admin_router.post("/admin/users/{user_id}")
async def change_user(user_id: str, request: Request, db: Db, settings: AppSettings,
                      action: Annotated[str, Form()] = "", role: Annotated[str, Form()] = "") -> Response:
    """`action` role (with `role`), disable or enable: the users API's PATCH."""
    viewer, ctx = await _admin(request, db, settings, "users")
    change: dict[str, Any] = {"role": role} if action == "role" else {"disabled": action == "disable"} if action in (
        "disable", "enable") else {}
    try:
        if not change:
            raise Problems({}, ("action: role, disable or enable",))
        await admin_data.change_user(db, viewer, user_id, **change)
    except (Problems, Denied) as p:
        found = await admin_data.user(db, viewer, user_id)
        reasons = [*p.fields.values(), *p.general] if isinstance(p, Problems) else [p.reason]
        return _page(request, settings, "admin_user.html", status=403 if isinstance(p, Denied) else 409,
                     viewer=viewer, u=found, roles=admin_data.ROLES, done="", form_problems=reasons, **ctx)
    return _see_other(f"/admin/users/{user_id}?done={action}")
