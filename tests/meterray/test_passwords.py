from __future__ import annotations

from meterray.identity import contract_number_problem, email_problem, normalise_email
from meterray.passwords import password_problems


def test_a_long_unusual_password_passes_whatever_its_characters() -> None:
    assert password_problems("correct horse battery staple", email="anna@example.ru", inn="7707083893") == []
    assert password_problems("Пароль-без-правил-42") == []


def test_short_long_common_repetitive_and_personal_passwords_are_refused_with_reasons() -> None:
    assert any("at least 10" in p for p in password_problems("short"))
    assert any("at most 128" in p for p in password_problems("x1" * 100))
    assert any("first an attacker tries" in p for p in password_problems("Password123"))
    assert any("first an attacker tries" in p for p in password_problems("ababababababab"))
    assert any("e-mail name" in p for p in password_problems("anna.petrova-2026", email="anna.petrova@x.ru"))
    assert any("INN" in p for p in password_problems("my7707083893pw", inn="7707083893"))
    assert any("control" in p for p in password_problems("tab\there-and-more"))


def test_emails_are_normalised_and_checked() -> None:
    assert normalise_email("  Anna@Example.RU ") == "anna@example.ru"
    assert email_problem("anna@example.ru") is None
    for bad in ["anna", "anna@", "@example.ru", "anna@example", "a b@example.ru", "a@b@c.ru", "a@x.ru\n",
                "x" * 65 + "@example.ru", "a@" + "b" * 250 + ".ru"]:
        assert email_problem(bad) is not None, bad


def test_contract_numbers() -> None:
    assert contract_number_problem("ЭС-12345/2023") is None
    assert contract_number_problem("  ") is not None
    assert contract_number_problem("x" * 101) is not None
    assert contract_number_problem("ЭС\x00-1") is not None
