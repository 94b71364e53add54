"""The demo's accounts: its organisation, its admin and a platform admin, made exactly so on every start."""
from __future__ import annotations

from argon2 import PasswordHasher

from meterray.app.demo_users import ensure_demo_identity, login_help
from meterray.settings import Settings
from tests.pipeline.helpers import sql


def test_the_demo_organisation_and_its_accounts_are_made_and_reset_on_every_start(database: Settings) -> None:
    settings = Settings(**{**database.model_dump(), "demo_password": "demo-password-for-this-test",
                           "demo_admin_email": "Demo.Test@meterray.local"})
    first = ensure_demo_identity(settings)
    users = "SELECT email, role, organisation_id, disabled, password_hash FROM auth.users WHERE email = ANY($1)"
    emails = ["demo.test@meterray.local", settings.demo_platform_email]
    rows = {r["email"]: r for r in sql(settings.pg_dsn, users, emails)}
    assert (rows[emails[0]]["role"], rows[emails[0]]["organisation_id"]) == ("admin", first.organisation_id)
    assert (rows[emails[1]]["role"], rows[emails[1]]["organisation_id"]) == ("admin", None)  # platform staff
    assert all(PasswordHasher().verify(r["password_hash"], "demo-password-for-this-test") for r in rows.values())
    org = sql(settings.pg_dsn, "SELECT inn, name FROM auth.organisations WHERE id = $1", first.organisation_id)[0]
    assert (org["inn"], org["name"]) == (settings.demo_organisation_inn, settings.demo_organisation_name)
    # Someone disabled the admin and changed its role: the next start makes it the demo's admin again.
    sql(settings.pg_dsn, "UPDATE auth.users SET disabled = true, role = 'customer' WHERE email = $1", emails[0])
    again = ensure_demo_identity(settings)
    assert again == first
    row = sql(settings.pg_dsn, users, emails[:1])[0]
    assert (row["role"], row["disabled"]) == ("admin", False)
    text = login_help(settings, again, "http://127.0.0.1:8000")
    assert "demo.test@meterray.local / demo-password-for-this-test" in text
    assert "http://127.0.0.1:8000/docs" in text and "Authorization: Bearer" in text
