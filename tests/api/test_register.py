"""POST /auth/register and POST /auth/verify-email (sign-up with email verification)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx

from chaser_auth.api.signup import REGISTERED_BODY
from tests.conftest import (
    EVERY_BACKEND,
    NEW_PASSWORD,
    PASSWORD,
    FakeClock,
    Received,
    Served,
    Smtp,
    make_settings,
    serve,
)

BACKENDS = EVERY_BACKEND  # SQLite with process memory; PostgreSQL with Redis

REGISTER = "/auth/register"
VERIFY_EMAIL = "/auth/verify-email"
VARYING = {"date", "x-request-id"}
TOKEN_AFTER_FRAGMENT = re.compile(r"#token=[A-Za-z0-9_-]{43,}")
VERIFY_SUBJECT = "Confirm your email address"
EXISTS_SUBJECT = "You already have an account"


def comparable(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = sorted((k, v) for k, v in response.headers.items() if k not in VARYING)
    return response.status_code, response.content, headers


async def register(app: Served, email: str, password: str = PASSWORD) -> httpx.Response:
    return await app.client.post(REGISTER, json={"email": email, "password": password})


async def login(app: Served, email: str, password: str) -> httpx.Response:
    return await app.client.post("/auth/login", json={"email": email, "password": password})


async def verify(app: Served, token: str) -> httpx.Response:
    response = await app.client.post(VERIFY_EMAIL, json={"token": token})
    assert response.headers["cache-control"] == "no-store"
    return response


def verify_token(app: Served, received: Received) -> str:
    """The token of the verification link in `received`, checked in both parts."""
    pattern = re.escape(app.settings.public_url) + r"/verify-email#token=([A-Za-z0-9_-]{43,})"
    found = re.search(pattern, received.text())
    assert found, "no verification link in the message"
    assert found.group(0) in received.html()
    return found.group(1)


async def mail_for(app: Served, email: str, count: int = 1) -> list[Received]:
    assert app.smtp is not None
    got = await app.smtp.sink.wait_for(count, to=email)
    assert len(got) == count, f"expected {count} message(s) to {email}, got {len(got)}"
    return got


async def registered_token(app: Served, email: str) -> str:
    """Register `email` (a new address) and return the token from its verification email."""
    assert (await register(app, email)).status_code == 202
    [received] = await mail_for(app, email)
    assert received.message["Subject"] == VERIFY_SUBJECT
    return verify_token(app, received)


def assert_invalid_token(response: httpx.Response) -> None:
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_token"
    assert error["message"]


# -- 1. the happy path ---------------------------------------------------------------------------


async def test_new_address_gets_a_verification_link_that_opens_a_session(app: Served) -> None:
    response = await register(app, "  New.User@EXAMPLE.org ")
    assert response.status_code == 202
    assert response.content == REGISTERED_BODY
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"

    [received] = await mail_for(app, "new.user@example.org")
    assert received.recipients == ["New.User@example.org"]
    assert received.message["From"] == app.settings.mail_from
    assert received.message["To"] == "New.User@example.org"
    assert received.message["Subject"] == VERIFY_SUBJECT
    assert received.message.get_content_type() == "multipart/alternative"
    token = verify_token(app, received)

    # unverified: the right password answers exactly like a wrong one
    unverified = await login(app, "New.User@example.org", PASSWORD)
    assert unverified.status_code == 401
    assert unverified.json()["error"]["code"] == "invalid_credentials"
    wrong = await login(app, "New.User@example.org", "some entirely wrong passphrase")
    assert comparable(unverified) == comparable(wrong)

    verified = await verify(app, token)
    assert verified.status_code == 200
    body = verified.json()
    assert set(body) == {"email", "token", "user_id"}
    assert body["email"] == "New.User@example.org"
    assert body["token"] != token
    me = await app.client.get("/auth/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.status_code == 200
    assert me.json()["user_id"] == body["user_id"]
    assert me.json()["email_verified"] is True

    assert (await login(app, "new.user@example.org", PASSWORD)).status_code == 200


# -- 2. no enumeration ---------------------------------------------------------------------------


async def test_existing_address_answers_the_same_and_gets_account_exists_mail(
    app: Served,
) -> None:
    await app.create_user("taken@example.com")
    existing = await register(app, "taken@example.com", NEW_PASSWORD)
    new = await register(app, "fresh@example.com", NEW_PASSWORD)
    assert existing.status_code == 202
    assert json.loads(existing.content) == json.loads(REGISTERED_BODY)
    assert comparable(existing) == comparable(new)
    assert not any(h.startswith("x-ratelimit") for h in existing.headers)

    [notice] = await mail_for(app, "taken@example.com")
    assert notice.recipients == ["taken@example.com"]
    assert notice.message["Subject"] == EXISTS_SUBJECT
    forgot = f"{app.settings.public_url}/forgot-password"
    for part in (notice.text(), notice.html()):
        assert forgot in part
        assert "token=" not in part
        assert not TOKEN_AFTER_FRAGMENT.search(part)
    [welcome] = await mail_for(app, "fresh@example.com")
    assert welcome.message["Subject"] == VERIFY_SUBJECT

    await app.settle()
    assert (await login(app, "taken@example.com", PASSWORD)).status_code == 200
    assert (await login(app, "taken@example.com", NEW_PASSWORD)).status_code == 401


# -- 3. input checks -----------------------------------------------------------------------------


async def test_invalid_email_and_weak_password_are_422_for_existing_and_new_alike(
    app: Served,
) -> None:
    await app.create_user("known@example.com")

    for bad in ("not an address", "two@@example.com", "", "@example.com"):
        response = await register(app, bad)
        assert response.status_code == 422, bad
        error = response.json()["error"]
        assert error["code"] == "invalid_email"
        assert error["message"]

    for password, reason in (("shortpw", "too_short"), ("passwordpassword", "common")):
        answers = [
            await register(app, email, password)
            for email in ("known@example.com", "unknown@example.com")
        ]
        assert answers[0].status_code == 422
        error = answers[0].json()["error"]
        assert error["code"] == "weak_password"
        assert reason in [d["code"] for d in error["details"]]
        assert all(d["message"] for d in error["details"])
        assert password not in answers[0].text  # never echoed
        assert comparable(answers[0]) == comparable(answers[1])

    for body in ({"email": "new@example.com"}, {"password": PASSWORD}, {}):
        response = await app.client.post(REGISTER, json=body)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "invalid_request"
        assert response.json()["error"]["details"]

    await app.settle()
    assert app.smtp is not None
    assert app.smtp.sink.messages == []
    async with app.runtime.store.tx() as tx:
        assert list(await tx.outbox.listing()) == []


# -- 4. verification token rules -----------------------------------------------------------------


async def test_verification_link_works_once(app: Served) -> None:
    token = await registered_token(app, "once@example.com")
    assert (await verify(app, token)).status_code == 200
    assert_invalid_token(await verify(app, token))


async def test_verification_link_is_valid_at_ttl_and_dead_one_second_later(app: Served) -> None:
    at_ttl = await registered_token(app, "edge@example.com")
    late = await registered_token(app, "late@example.com")

    app.clock.advance(app.settings.verify_token_ttl)
    assert (await verify(app, at_ttl)).status_code == 200
    app.clock.advance(1)
    assert_invalid_token(await verify(app, late))
    assert (await login(app, "late@example.com", PASSWORD)).status_code == 401


async def test_an_earlier_sign_up_of_the_address_never_gets_its_password_used(
    app: Served,
) -> None:
    # Pre-registration: an attacker signs the owner's address up with a password of their
    # own; later the owner signs up. Whoever follows the newest link in the inbox ends up
    # with the owner's password only, and the attacker's link and password are dead.
    async with app.client_from("127.0.0.2") as attacker, app.client_from("127.0.0.3") as owner:
        sign_up = {"email": "owner@example.com", "password": PASSWORD}
        assert (await attacker.post(REGISTER, json=sign_up)).status_code == 202
        [first] = await mail_for(app, "owner@example.com", 1)
        sign_up = {"email": "owner@example.com", "password": NEW_PASSWORD}
        assert (await owner.post(REGISTER, json=sign_up)).status_code == 202
        received = await mail_for(app, "owner@example.com", 2)
        assert [m.message["Subject"] for m in received] == [VERIFY_SUBJECT, VERIFY_SUBJECT]

        assert_invalid_token(await verify(app, verify_token(app, first)))
        verified = await owner.post(VERIFY_EMAIL, json={"token": verify_token(app, received[1])})
        assert verified.status_code == 200

        assert (await login(app, "owner@example.com", PASSWORD)).status_code == 401
        assert (await login(app, "owner@example.com", NEW_PASSWORD)).status_code == 200
    async with app.runtime.store.tx() as tx:
        users = [u for u in await tx.users.listing() if u.email == "owner@example.com"]
    assert len(users) == 1


async def test_the_attackers_link_followed_first_leaves_the_owners_sign_up_to_win(
    app: Served,
) -> None:
    # The other order: the attacker's own link is followed before the owner signs up (the
    # attacker does not hold the mailbox, so only its owner can press it). Then the address is
    # verified and a later sign-up is "you already have an account" — with the owner's mailbox
    # holding the way back in (a reset), which ends every session opened with that password.
    await registered_token(app, "pressed@example.com")
    assert (await register(app, "pressed@example.com", NEW_PASSWORD)).status_code == 202
    received = await mail_for(app, "pressed@example.com", 2)
    assert received[1].message["Subject"] == VERIFY_SUBJECT
    assert (await verify(app, verify_token(app, received[1]))).status_code == 200
    assert (await register(app, "pressed@example.com", PASSWORD)).status_code == 202
    received = await mail_for(app, "pressed@example.com", 3)
    assert received[2].message["Subject"] == EXISTS_SUBJECT
    assert not TOKEN_AFTER_FRAGMENT.search(received[2].text())
    assert (await login(app, "pressed@example.com", NEW_PASSWORD)).status_code == 200
    assert (await login(app, "pressed@example.com", PASSWORD)).status_code == 401


async def test_unknown_and_malformed_tokens_are_invalid_token(app: Served) -> None:
    for token in ("A" * 43, "short", "", "y" * 129, "not a token!!"):
        assert_invalid_token(await verify(app, token))
    for body in ({}, {"token": 5}):
        response = await app.client.post(VERIFY_EMAIL, json=body)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "invalid_request"


async def test_disabled_account_cannot_verify_and_gets_no_mail(app: Served) -> None:
    token = await registered_token(app, "off@example.com")
    await app.runtime.accounts.set_active("off@example.com", False)
    assert_invalid_token(await verify(app, token))

    assert (await register(app, "off@example.com")).status_code == 202
    await app.settle()
    assert app.smtp is not None
    assert len(app.smtp.sink.to("off@example.com")) == 1  # only the first verification mail


# -- 5. per-IP limit -----------------------------------------------------------------------------


async def test_per_ip_register_limit_answers_429_with_rate_limit_headers(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    settings = make_settings(
        tmp_path, **backend_settings, smtp_url=smtp.url, rate_limit_register_per_ip="2/minute"
    )
    async with serve(settings, clock, smtp) as app:
        ok = [await register(app, f"user{i}@example.com") for i in range(2)]
        assert [r.status_code for r in ok] == [202, 202]
        limited = await register(app, "user3@example.com")
        assert limited.status_code == 429
        error = limited.json()["error"]
        assert error["code"] == "rate_limited"
        assert error["message"]
        headers = limited.headers
        assert 1 <= int(headers["retry-after"]) <= 60
        assert headers["x-ratelimit-limit"] == "2"
        assert headers["x-ratelimit-remaining"] == "0"
        assert int(headers["x-ratelimit-reset"]) > 0
        await app.settle()
        async with app.runtime.store.tx() as tx:
            assert len(await tx.outbox.listing()) == 2  # the refused request was not recorded


# -- 6. inbox flooding ---------------------------------------------------------------------------


async def test_registrations_cannot_flood_an_inbox_past_the_per_address_limit(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    settings = make_settings(
        tmp_path, **backend_settings, smtp_url=smtp.url, rate_limit_register_per_ip="1000/minute"
    )
    async with serve(settings, clock, smtp) as app:
        answers = [await register(app, "flood@example.com") for _ in range(6)]
        assert {a.status_code for a in answers} == {202}
        await app.settle()
        received = smtp.sink.to("flood@example.com")
        assert len(received) == 3
        # the account stays unverified, so each sign-up that got through mailed a new link
        assert [m.message["Subject"] for m in received] == [VERIFY_SUBJECT] * 3


# -- 7. at rest ----------------------------------------------------------------------------------


async def test_no_password_hash_address_or_verify_token_is_kept_at_rest(
    app: Served, tmp_path: Path
) -> None:
    await app.create_user("old@example.com")
    token = await registered_token(app, "rest@example.com")
    assert (await register(app, "old@example.com", NEW_PASSWORD)).status_code == 202
    await mail_for(app, "old@example.com")
    await app.settle()

    async with app.runtime.store.tx() as tx:
        rows = list(await tx.outbox.listing())
        user = await tx.users.by_key("rest@example.com")
    assert user is not None and user.password_hash
    assert len(rows) == 2
    for row in rows:
        assert row.status == "done"
        assert row.payload is None
        assert user.password_hash not in repr(row.payload)

    def stored_bytes() -> bytes:
        db = tmp_path / "auth.db"
        wal = tmp_path / "auth.db-wal"
        return db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")

    assert token not in await app.dump()
    if app.settings.database_url.startswith("sqlite"):
        assert token.encode() not in await asyncio.to_thread(stored_bytes)
    # the token still works: only its digest was needed
    assert (await verify(app, token)).status_code == 200


# -- 8. a reset verifies the address -------------------------------------------------------------


async def test_password_reset_of_an_unverified_account_verifies_it(app: Served) -> None:
    await registered_token(app, "forgot@example.com")
    assert (await login(app, "forgot@example.com", PASSWORD)).status_code == 401

    _, reset_token = await app.reset_link("forgot@example.com")
    confirm = await app.client.post(
        "/auth/password-reset/confirm", json={"token": reset_token, "password": NEW_PASSWORD}
    )
    assert confirm.status_code == 200

    session = await login(app, "forgot@example.com", NEW_PASSWORD)
    assert session.status_code == 200
    me = await app.client.get(
        "/auth/me", headers={"Authorization": f"Bearer {session.json()['token']}"}
    )
    assert me.json()["email_verified"] is True


async def test_a_password_reset_or_change_kills_outstanding_verification_links(
    app: Served,
) -> None:
    """A verification link copied before the password changed must not open a session after."""
    reset_before = await registered_token(app, "reset-after@example.com")
    _, reset_token = await app.reset_link("reset-after@example.com")
    confirm = await app.client.post(
        "/auth/password-reset/confirm", json={"token": reset_token, "password": NEW_PASSWORD}
    )
    assert confirm.status_code == 200
    assert_invalid_token(await verify(app, reset_before))

    changed_before = await registered_token(app, "change-after@example.com")
    user = await app.runtime.accounts.find("change-after@example.com")
    await app.runtime.accounts.change_password(user, PASSWORD, NEW_PASSWORD)
    assert_invalid_token(await verify(app, changed_before))
