"""Partner configuration at the edge: every problem named at once, secrets never shown."""
from __future__ import annotations

import json

import pytest

from meterray.config import ConfigError
from meterray.partners import MASK, unit_factor, validate_partner

READINGS = {"device": "meter", "timestamp": "time", "quantity": "quantity", "value": "value"}


def doc(**extra: object) -> dict:
    return {"partner_id": "acme", "base_url": "http://127.0.0.1:9/", "paths": [
        {"name": "r", "url": "/readings?since={since}", "readings": READINGS}], **extra}


def test_a_good_document_with_defaults() -> None:
    c = validate_partner(doc(devices=[{"external_id": "m-1", "device_id": "acme-m-1"}]))
    assert c.paths[0].pagination.kind == "none" and c.auth.kind == "none" and c.rate.requests_per_minute == 60
    assert c.device_map() == {"m-1": "acme-m-1"}


def test_every_problem_is_listed_with_where_it_is() -> None:
    bad = doc(base_url="ftp://x", timeout_s=0, auth={"kind": "oauth2", "client_id": "c"},
              paths=[{"name": "r", "url": "/x?d={day}", "readings": {**READINGS, "quantity_map": {"e": "9-9:9"}}},
                     {"name": "r", "url": "/y", "readings": READINGS, "status": {
                         "device": "m", "timestamp": "t", "status": "s"}},
                     {"name": "c", "url": "/z", "format": "csv", "pagination": {"kind": "cursor"},
                      "readings": READINGS}])
    with pytest.raises(ConfigError) as info:
        validate_partner(bad)
    text = "\n".join(info.value.problems)
    for words in ("base_url: Value error, 'ftp://x' is not an http(s) URL".replace("Value error, ", ""),
                  "timeout_s: Input should be greater than or equal to 0.1",
                  "auth.oauth2.token_url: Field required", "auth.oauth2.client_secret: Field required",
                  "unknown OBIS code(s) ['9-9:9']", "either `readings` or `status`",
                  "set pagination.next_header"):
        assert words in text, (words, text)
    assert str(info.value).startswith("invalid partner configuration:")


def test_unknown_placeholders_and_duplicate_paths_or_devices() -> None:
    for bad, words in [
        (doc(paths=[{"name": "r", "url": "/x?d={day}", "readings": READINGS}]), "unknown placeholder(s) ['day']"),
        (doc(paths=[{"name": "r", "url": "/x", "readings": READINGS}] * 2), "path name(s) ['r'] used more than once"),
        (doc(devices=[{"external_id": "m", "device_id": "a"}, {"external_id": "m", "device_id": "b"}]),
         "external id(s) ['m'] listed more than once"),
    ]:
        with pytest.raises(ConfigError, match=r".*") as info:
            validate_partner(bad)
        assert any(words in p for p in info.value.problems), info.value.problems


def test_secrets_are_masked_in_the_public_document_and_masks_keep_the_stored_secret() -> None:
    c = validate_partner(doc(auth={"kind": "oauth2", "token_url": "http://127.0.0.1:9/token", "client_id": "c",
                                   "client_secret": "s3cret"}, webhook_secret="hook-s3cret"))
    public = c.public()
    assert "s3cret" not in json.dumps(public) and "s3cret" not in repr(c)
    assert public["auth"]["client_secret"] == MASK and public["webhook_secret"] == MASK
    again = validate_partner(public, c.secrets())
    assert again == c and again.secrets() == {"auth.client_secret": "s3cret", "webhook_secret": "hook-s3cret"}


def test_unit_prefixes_convert() -> None:
    assert unit_factor("Wh", "kWh") == 0.001 and unit_factor("kW", "W") == 1000 and unit_factor("V", "V") == 1
    assert unit_factor("var", "kWh") is None and unit_factor("kvarh", "kWh") is None


def test_a_mask_does_not_carry_a_stored_secret_to_another_address() -> None:
    stored = validate_partner(doc(auth={"kind": "api_key", "key": "s3cret"}))
    same = validate_partner(stored.public(), stored)
    assert same.secrets() == {"auth.key": "s3cret"}
    elsewhere = {**stored.public(), "base_url": "http://attacker.example/"}
    with pytest.raises(ConfigError) as info:
        validate_partner(elsewhere, stored)
    assert info.value.problems == ["partner 'acme': auth.key: *** keeps the stored secret only while base_url and "
                                   "token_url stay the same (and the partner exists); send the secret itself"]
    moved = validate_partner({**elsewhere, "auth": {"kind": "api_key", "key": "new-key"}}, stored)
    assert moved.secrets() == {"auth.key": "new-key"}


def test_a_backfill_walks_the_path_that_carries_the_quantity() -> None:
    status = {"device": "m", "timestamp": "t", "status": "s"}
    wide = {"device": "m", "timestamp": "t", "values": [{"quantity": "1-0:2.8.0", "field": "export"}]}
    mapped = {**READINGS, "quantity_map": {"energy": "1-0:1.8.0"}}
    c = validate_partner(doc(paths=[{"name": "status", "url": "/s", "status": status},
                                    {"name": "long", "url": "/l", "readings": READINGS},
                                    {"name": "wide", "url": "/w", "readings": wide},
                                    {"name": "mapped", "url": "/m", "readings": mapped}]))
    # A path that names the quantity beats one whose records may carry any OBIS code; status paths never.
    assert c.backfill_path("1-0:1.8.0").name == "mapped"  # type: ignore[union-attr]
    assert c.backfill_path("1-0:2.8.0").name == "wide"  # type: ignore[union-attr]
    assert c.backfill_path("1-0:16.7.0").name == "long"  # type: ignore[union-attr]
    only_wide = validate_partner(doc(paths=[{"name": "wide", "url": "/w", "readings": wide}]))
    assert only_wide.backfill_path("1-0:1.8.0") is None
    assert c.backfill_window_s == 7 * 86_400  # by default a partner can resend a week
    with pytest.raises(ConfigError, match="backfill_window_s"):
        validate_partner(doc(backfill_window_s=0))
