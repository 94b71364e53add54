"""The CLI's side of access: production refuses to start with a development fallback (before anything
starts), and `meterray register --organisation` names an organisation that must exist."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from meterray.app.cli import main
from meterray.settings import Settings
from tests.pipeline.helpers import sql

SIGNING_KEY = "production-signing-key-" + "z" * 32


@pytest.mark.parametrize(("command", "why"), [
    (["run"], "METERRAY_FNS_API_KEY is not set"),
    (["demo", "--meters", "1"], "the demo (public demo accounts) is for development only")])
def test_production_with_a_fallback_is_refused_before_anything_starts(
        command: list[str], why: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("METERRAY_ENV", "production")
    monkeypatch.setenv("METERRAY_TOKEN_SIGNING_KEY", SIGNING_KEY)
    monkeypatch.delenv("METERRAY_FNS_API_KEY", raising=False)
    # Nothing answers here: had the command gone on to migrate or start Ray, it would fail differently.
    monkeypatch.setenv("METERRAY_PG_DSN", "postgresql://meterray:meterray@127.0.0.1:9/nowhere")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("not started: METERRAY_ENV=production")
    assert why in err


def test_register_refuses_an_unknown_organisation_and_registers_nothing(
        database: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("METERRAY_PG_DSN", database.pg_dsn)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([{"device_id": "cli-org-1", "host": "192.0.2.1", "port": 502, "unit_id": 1,
                                     "profile": "sdm630"}]))
    nobody = uuid.uuid4()
    assert main(["register", str(manifest), "--organisation", str(nobody)]) == 2
    assert f"no organisation {nobody}" in capsys.readouterr().err
    assert not sql(database.pg_dsn, "SELECT 1 FROM devices.devices WHERE id = 'cli-org-1'")
