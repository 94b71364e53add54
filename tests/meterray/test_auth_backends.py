"""Development fallbacks are reported; production refuses them and the public signing key."""
from __future__ import annotations

import pytest

from meterray.auth_backends import BackendConfigError, ContractCheck, InnCheck, auth_backends
from meterray.settings import DEVELOPMENT_SIGNING_KEY, Settings, SettingsError

KEYS = {"METERRAY_FNS_API_KEY": "fns-secret-1", "METERRAY_GKH_URL": "https://gkh.example",
        "METERRAY_GKH_API_KEY": "gkh-secret-2", "METERRAY_TOKEN_SIGNING_KEY": "s" * 40}


def test_without_keys_development_falls_back_and_says_each_fallback() -> None:
    settings = Settings.from_env({})
    b = auth_backends(settings)
    assert (b.inn, b.contract, b.development_signing_key) == (InnCheck.CHECKSUM_ONLY, ContractCheck.UNVERIFIED, True)
    said = " ".join(b.warnings())
    assert "METERRAY_FNS_API_KEY" in said and "METERRAY_GKH_API_KEY" in said and "METERRAY_TOKEN_SIGNING_KEY" in said
    assert settings.signing_key == DEVELOPMENT_SIGNING_KEY


def test_with_keys_nothing_falls_back() -> None:
    b = auth_backends(Settings.from_env(KEYS))
    assert (b.inn, b.contract, b.development_signing_key, b.warnings()) == (InnCheck.FNS, ContractCheck.GKH, False, [])


def test_production_never_falls_back() -> None:
    with pytest.raises(SettingsError, match="METERRAY_TOKEN_SIGNING_KEY"):
        Settings.from_env({"METERRAY_ENV": "production"})
    for missing in ("METERRAY_FNS_API_KEY", "METERRAY_GKH_API_KEY"):
        env = {**{k: v for k, v in KEYS.items() if k != missing}, "METERRAY_ENV": "production"}
        with pytest.raises(BackendConfigError, match=missing):
            auth_backends(Settings.from_env(env))
    auth_backends(Settings.from_env({**KEYS, "METERRAY_ENV": "production"}))


def test_bad_auth_settings_name_the_variable() -> None:
    with pytest.raises(SettingsError, match="at least 32 bytes"):
        Settings.from_env({"METERRAY_TOKEN_SIGNING_KEY": "short"})
    with pytest.raises(SettingsError, match="METERRAY_GKH_URL"):
        Settings.from_env({"METERRAY_GKH_API_KEY": "k"})
    with pytest.raises(SettingsError, match="METERRAY_TRUSTED_PROXIES"):
        Settings.from_env({"METERRAY_TRUSTED_PROXIES": "10.0.0.0/8, nonsense"})


def test_secrets_are_masked_in_printed_settings() -> None:
    shown = Settings.from_env(KEYS).redacted()
    text = str(shown)
    assert all(v not in text for k, v in KEYS.items() if k != "METERRAY_GKH_URL")
    assert shown["fns_api_key"] == shown["gkh_api_key"] == shown["token_signing_key"] == "***"
    assert Settings.from_env({}).redacted()["fns_api_key"] == ""
    assert all(v not in Settings.from_env(KEYS).shell() for k, v in KEYS.items() if k != "METERRAY_GKH_URL")
