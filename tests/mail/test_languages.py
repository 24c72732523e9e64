"""Whose language a mail is in (docs/branding.md, "Languages"), over HTTP with a real SMTP
server: an account's mail is in the account's language (the sign-up's `locale`, else its
`Accept-Language`), whoever asks — the new-sign-in notice and the address-change confirmation
(to the new address) and notice too; the notice to an address without an account is in the
language of the request that asked; every mail says its language in `Content-Language`. The
reset request's answer is the same bytes whatever the address and the language."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import EVERY_BACKEND, FakeClock, Received, Served, Smtp, make_settings, serve

BACKENDS = EVERY_BACKEND  # SQLite with process memory; PostgreSQL with Redis

VARYING = {"date", "x-request-id"}


@pytest.fixture
async def app(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, object]
) -> AsyncIterator[Served]:
    settings = make_settings(tmp_path, smtp_url=smtp.url, notify_unknown=True, **backend_settings)
    async with serve(settings, clock, smtp) as served:
        yield served


async def sign_up(app: Served, email: str, *, locale: str | None = None, accept: str = "") -> None:
    body = {"email": email, "password": "correct horse battery staple"}
    if locale is not None:
        body["locale"] = locale
    headers = {"Accept-Language": accept} if accept else {}
    response = await app.client.post("/auth/register", json=body, headers=headers)
    assert response.status_code == 202


async def newest(app: Served, email: str, count: int = 1) -> Received:
    assert app.smtp is not None
    got = await app.smtp.sink.wait_for(count, to=email)
    assert len(got) == count, f"expected {count} message(s) to {email}, got {len(got)}"
    return got[-1]


async def test_sign_up_with_a_locale_gets_its_verification_mail_in_that_language(
    app: Served,
) -> None:
    await sign_up(app, "anna@example.com", locale="de", accept="fr;q=1")
    mail = await newest(app, "anna@example.com")
    assert mail.message["Content-Language"] == "de"
    assert mail.message["Subject"] == "Bestätigen Sie Ihre E-Mail-Adresse"
    assert "Link und Code funktionieren einmal und sind 1 Tag lang gültig." in mail.text()
    assert '<html lang="de" dir="ltr">' in mail.html()


async def test_without_a_locale_the_sign_ups_accept_language_decides(app: Served) -> None:
    await sign_up(app, "haruto@example.com", accept="ja-JP,ja;q=0.9,en;q=0.8")
    mail = await newest(app, "haruto@example.com")
    assert mail.message["Content-Language"] == "ja"
    assert mail.message["Subject"] == "メールアドレスを確認してください"
    # A locale that names no shipped language falls back to the header, then to English.
    await sign_up(app, "tlh@example.com", locale="tlh", accept="pt-BR")
    assert (await newest(app, "tlh@example.com")).message["Content-Language"] == "pt-BR"
    await sign_up(app, "plain@example.com")
    plain = await newest(app, "plain@example.com")
    assert plain.message["Content-Language"] == "en"
    assert plain.message["Subject"] == "Confirm your email address"


async def test_a_reset_for_an_account_is_in_the_accounts_language_whoever_asks(
    app: Served,
) -> None:
    await sign_up(app, "anna@example.com", locale="de")
    await newest(app, "anna@example.com")
    response = await app.client.post(
        "/auth/password-reset/request",
        json={"email": "anna@example.com"},
        headers={"Accept-Language": "fr"},
    )
    assert response.status_code == 200
    mail = await newest(app, "anna@example.com", 2)
    assert mail.message["Content-Language"] == "de"
    assert mail.message["Subject"] == "Passwort zurücksetzen"
    assert "30 Minuten" in mail.text()
    assert "30 Minuten" in mail.html()


async def test_an_account_without_a_language_gets_english(app: Served) -> None:
    await app.create_user("operator-made@example.com")  # `users create`: no language
    await app.client.post(
        "/auth/password-reset/request",
        json={"email": "operator-made@example.com"},
        headers={"Accept-Language": "ar"},
    )
    mail = await newest(app, "operator-made@example.com")
    assert mail.message["Content-Language"] == "en"
    assert mail.message["Subject"] == "Reset your password"


@pytest.mark.parametrize(
    ("accept", "tag", "subject"),
    [
        ("es-MX,es;q=0.9", "es", "Solicitud de restablecimiento de contraseña"),
        ("ar", "ar", "طلب إعادة تعيين كلمة المرور"),
        ("", "en", "Password reset requested"),
    ],
)
async def test_the_unknown_address_notice_follows_the_requests_language(
    app: Served, accept: str, tag: str, subject: str
) -> None:
    headers = {"Accept-Language": accept} if accept else {}
    response = await app.client.post(
        "/auth/password-reset/request", json={"email": "nobody@example.com"}, headers=headers
    )
    assert response.status_code == 200
    mail = await newest(app, "nobody@example.com")
    assert mail.message["Content-Language"] == tag
    assert mail.message["Subject"] == subject
    assert app.settings.public_url in mail.text()


def comparable(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = sorted((k, v) for k, v in response.headers.items() if k not in VARYING)
    return response.status_code, response.content, headers


async def test_the_reset_answer_is_the_same_for_known_and_unknown_in_any_language(
    app: Served,
) -> None:
    await sign_up(app, "anna@example.com", locale="de")
    await newest(app, "anna@example.com")
    answers = set()
    for email in ("anna@example.com", "nobody@example.com"):
        for accept in ("", "de", "fr", "ar", "ja;q=0.5,pt-BR", "zh-CN"):
            headers = {"Accept-Language": accept} if accept else {}
            response = await app.client.post(
                "/auth/password-reset/request", json={"email": email}, headers=headers
            )
            answers.add(repr(comparable(response)))
    assert len(answers) == 1, answers
    assert "content-language" not in next(iter(answers)).lower()


@pytest.fixture
async def noticing(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, object]
) -> AsyncIterator[Served]:
    """The service with the opt-in "new sign-in" notice on."""
    settings = make_settings(
        tmp_path, smtp_url=smtp.url, notify_new_sign_in=True, **backend_settings
    )
    async with serve(settings, clock, smtp) as served:
        yield served


async def test_a_german_accounts_sign_in_and_address_change_mail_is_german(
    noticing: Served,
) -> None:
    app = noticing
    await sign_up(app, "anna@example.com", locale="de", accept="fr")
    verification = await newest(app, "anna@example.com")
    token = re.search(r"/verify-email#token=([A-Za-z0-9_-]{43,})", verification.text())
    assert token
    verified = await app.client.post("/auth/verify-email", json={"token": token.group(1)})
    assert verified.status_code == 200, verified.text

    # Whoever signs in, and in whatever language, the notice is in the account's.
    login = await app.client.post(
        "/auth/login",
        json={"email": "anna@example.com", "password": "correct horse battery staple"},
        headers={"Accept-Language": "ja"},
    )
    assert login.status_code == 200, login.text
    notice = await newest(app, "anna@example.com", 2)
    assert notice.message["Content-Language"] == "de"
    assert notice.message["Subject"] == "Neue Anmeldung bei Ihrem Konto"
    assert "hat sich jemand bei dem Konto für diese Adresse angemeldet" in notice.text()
    assert '<html lang="de" dir="ltr">' in notice.html()

    # The confirmation goes to the new address, but it is the account's mail.
    asked = await app.client.post(
        "/auth/email/change",
        json={"current_password": "correct horse battery staple", "email": "anna@example.org"},
        headers={"Authorization": f"Bearer {login.json()['token']}", "Accept-Language": "ar"},
    )
    assert asked.status_code == 202, asked.text
    confirm = await newest(app, "anna@example.org")
    assert confirm.message["Content-Language"] == "de"
    assert confirm.message["Subject"] == "Bestätigen Sie Ihre neue E-Mail-Adresse"
    assert "(er ist 1 Tag lang gültig)" in confirm.text()
    assert "Neue Adresse bestätigen" in confirm.html()
    link = re.search(r"/change-email#token=([A-Za-z0-9_-]{43,})", confirm.text())
    assert link
    moved = await app.client.post("/auth/email/change/confirm", json={"token": link.group(1)})
    assert moved.status_code == 200, moved.text

    # And the notice to the old address, with its undo link.
    told = await newest(app, "anna@example.com", 3)
    assert told.message["Content-Language"] == "de"
    assert told.message["Subject"] == "Ihr Konto verwendet jetzt eine andere E-Mail-Adresse"
    assert "verwendet jetzt anna@example.org" in told.text()
    assert "/undo-email-change#token=" in told.text()
