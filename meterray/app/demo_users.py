"""The demo's identities: one organisation owning the simulated meters, its admin, and a platform admin
(organisation-less: the runtime, partners and every device). Their e-mails and the shared password are
settings (`METERRAY_DEMO_*`); every start makes the accounts exactly so again (password reset, enabled)."""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import asyncpg

from meterray.identity import Role, normalise_email
from meterray.settings import Settings


@dataclass(frozen=True, slots=True)
class DemoIdentity:
    organisation_id: uuid.UUID
    admin_email: str
    platform_email: str


async def _ensure(settings: Settings) -> DemoIdentity:
    from serve_apps.users.security import hash_password
    from storage.postgres import auth_users

    password_hash = await hash_password(settings.demo_password.get_secret_value())
    admin, platform = normalise_email(settings.demo_admin_email), normalise_email(settings.demo_platform_email)
    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        async with conn.transaction():
            org = await auth_users.create_organisation(conn, settings.demo_organisation_inn,
                                                       settings.demo_organisation_name)
            await auth_users.ensure_user(conn, admin, password_hash, Role.ADMIN.value, org)
            await auth_users.ensure_user(conn, platform, password_hash, Role.ADMIN.value, None)
    finally:
        await conn.close()
    return DemoIdentity(org, admin, platform)


def ensure_demo_identity(settings: Settings) -> DemoIdentity:
    return asyncio.run(_ensure(settings))


def login_help(settings: Settings, identity: DemoIdentity, api: str) -> str:
    password = settings.demo_password.get_secret_value()  # printed on purpose: the demo's public password
    return (f"  demo organisation: {settings.demo_organisation_name} (INN {settings.demo_organisation_inn}) owns the "
            f"simulated meters\n"
            f"  log in as {identity.admin_email} / {password} (its admin) or {identity.platform_email} / {password} "
            f"(platform admin: every device, runtime, partners)\n"
            f"    in {api}/docs: Authorize, then username and password\n"
            f"    with curl: TOKEN=$(curl -s -d username={identity.admin_email} -d password={password} "
            f"{api}/api/v1/auth/token | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')\n"
            f"               curl -H \"Authorization: Bearer $TOKEN\" {api}/api/v1/devices\n")
