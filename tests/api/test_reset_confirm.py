"""POST /auth/password-reset/confirm and /verify (docs/api.md; tokens.py's numbered list)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import pytest

from tests.conftest import EVERY_BACKEND, NEW_PASSWORD, PASSWORD, Served

BACKENDS = EVERY_BACKEND  # SQLite with process memory; PostgreSQL with Redis

CONFIRM = "/auth/password-reset/confirm"
VERIFY = "/auth/password-reset/verify"


async def confirm(app: Served, token: str, password: str = NEW_PASSWORD) -> tuple[int, dict]:
    response = await app.client.post(CONFIRM, json={"token": token, "password": password})
    assert response.headers["cache-control"] == "no-store"
    return response.status_code, response.json()


async def login(app: Served, email: str, password: str) -> int:
    response = await app.client.post("/auth/login", json={"email": email, "password": password})
    return response.status_code


def assert_invalid_token(status: int, body: dict) -> None:
    assert status == 400
    assert body["error"]["code"] == "invalid_token"
    assert body["error"]["message"]


async def test_reset_sets_the_password_and_returns_a_working_session(app: Served) -> None:
    user_id = await app.create_user("ann@example.com")
    _, token = await app.reset_link("ann@example.com")

    status, body = await confirm(app, token)

    assert status == 200
    assert set(body) == {"email", "token", "user_id"}
    assert body["email"] == "ann@example.com"
    assert body["user_id"] == user_id
    assert body["token"] != token
    me = await app.client.get("/auth/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.status_code == 200
    assert me.json()["user_id"] == user_id
    assert await login(app, "ann@example.com", NEW_PASSWORD) == 200
    assert await login(app, "ann@example.com", PASSWORD) == 401


async def test_used_token_is_refused(app: Served) -> None:
    await app.create_user("once@example.com")
    _, token = await app.reset_link("once@example.com")
    assert (await confirm(app, token))[0] == 200
    assert_invalid_token(*await confirm(app, token, "yet another fine passphrase"))
    assert (await app.client.post(VERIFY, json={"token": token})).status_code == 400
    assert await login(app, "once@example.com", NEW_PASSWORD) == 200


async def test_unknown_and_malformed_tokens_are_refused_with_one_code(app: Served) -> None:
    for token in ("A" * 43, "short", "", "y" * 129, "not a token!!"):
        assert_invalid_token(*await confirm(app, token))
        verify = await app.client.post(VERIFY, json={"token": token})
        assert verify.status_code == 400
        assert verify.json()["error"]["code"] == "invalid_token"


async def test_token_is_valid_at_ttl_and_dead_one_second_later(app: Served) -> None:
    await app.create_user("ttl@example.com")
    _, token = await app.reset_link("ttl@example.com")
    ttl = app.settings.reset_token_ttl

    app.clock.advance(ttl)
    verify = await app.client.post(VERIFY, json={"token": token})
    assert verify.status_code == 200
    assert verify.json()["valid"] is True

    app.clock.advance(1)
    assert (await app.client.post(VERIFY, json={"token": token})).status_code == 400
    assert_invalid_token(*await confirm(app, token))
    assert await login(app, "ttl@example.com", PASSWORD) == 200


async def test_verify_reports_expiry_and_never_consumes(app: Served) -> None:
    await app.create_user("look@example.com")
    _, token = await app.reset_link("look@example.com")
    for _ in range(3):
        verify = await app.client.post(VERIFY, json={"token": token})
        assert verify.status_code == 200
    expires = verify.json()["expires_at"]
    expected = app.clock.now.timestamp() + app.settings.reset_token_ttl
    assert abs(datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp() - expected) < 1
    assert (await confirm(app, token))[0] == 200


async def test_newer_link_supersedes_older_ones(app: Served) -> None:
    await app.create_user("twice@example.com")
    _, first = await app.reset_link("twice@example.com")
    _, second = await app.reset_link("twice@example.com")
    assert first != second
    assert_invalid_token(*await confirm(app, first))
    assert (await confirm(app, second))[0] == 200


async def test_of_links_minted_together_for_one_account_only_one_works(app: Served) -> None:
    """Requests that arrive together are minted in one worker round, in one statement each
    step: there the account's earlier links are stored already revoked, not revoked later."""
    await app.create_user("together@example.com")
    responses = await asyncio.gather(*(app.request_reset("together@example.com") for _ in range(3)))
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert app.smtp is not None
    mails = await app.smtp.sink.wait_for(3, to="together@example.com")
    assert len(mails) == 3
    tokens = {mail.link()[1] for mail in mails}
    assert len(tokens) == 3
    verified = [
        (await app.client.post(VERIFY, json={"token": token})).status_code for token in tokens
    ]
    assert sorted(verified) == [200, 400, 400]


async def test_weak_password_is_refused_with_reasons_and_the_token_survives(app: Served) -> None:
    await app.create_user("weak@example.com")
    _, token = await app.reset_link("weak@example.com")

    cases = {
        "shortpw": "too_short",
        "weak@example.com": "matches_email",
        "x" * 129: "too_long",
        "aaaaaaaaaaaaaaaaaaaa": "repetitive",
        "passwordpassword": "common",
    }
    for password, code in cases.items():
        status, body = await confirm(app, token, password)
        assert status == 422, password
        assert body["error"]["code"] == "weak_password"
        codes = [d["code"] for d in body["error"]["details"]]
        assert code in codes, (password, codes)
        assert all(d["message"] for d in body["error"]["details"])
        assert password not in str(body)  # the refused password is never echoed

    assert (await confirm(app, token))[0] == 200


async def test_two_concurrent_confirms_exactly_one_wins(app: Served) -> None:
    await app.create_user("race@example.com")
    _, token = await app.reset_link("race@example.com")
    results = await asyncio.gather(
        *(confirm(app, token, f"concurrent passphrase number {i}") for i in range(6))
    )
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 400, 400, 400, 400, 400]
    winner = next(i for i, (status, _) in enumerate(results) if status == 200)
    assert await login(app, "race@example.com", f"concurrent passphrase number {winner}") == 200


async def test_reset_revokes_every_other_session(app: Served) -> None:
    await app.create_user("sess@example.com")
    sessions = []
    for _ in range(2):
        response = await app.client.post(
            "/auth/login", json={"email": "sess@example.com", "password": PASSWORD}
        )
        assert response.status_code == 200
        sessions.append(response.json()["token"])
    for token in sessions:
        me = await app.client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200

    _, reset_token = await app.reset_link("sess@example.com")
    status, body = await confirm(app, reset_token)
    assert status == 200

    for token in sessions:
        me = await app.client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 401
        assert me.json()["error"]["code"] == "not_authenticated"
    me = await app.client.get("/auth/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.status_code == 200


async def test_password_changed_notice_is_sent_without_a_token(app: Served) -> None:
    await app.create_user("notice@example.com")
    _, token = await app.reset_link("notice@example.com")
    assert (await confirm(app, token))[0] == 200
    assert app.smtp is not None
    received = await app.smtp.sink.wait_for(2, to="notice@example.com")
    assert len(received) == 2
    notice = received[1]
    assert notice.message["Subject"] == "Your password was changed"
    assert notice.recipients == ["notice@example.com"]
    assert f"{app.settings.public_url}/forgot-password" in notice.text()
    assert f"{app.settings.public_url}/forgot-password" in notice.html()
    for part in (notice.text(), notice.html()):
        assert "token" not in part
        assert token not in part
    assert notice.message["Message-ID"] != received[0].message["Message-ID"]


async def test_disabled_account_cannot_use_an_outstanding_link(app: Served) -> None:
    user_id = await app.create_user("gone@example.com")
    _, token = await app.reset_link("gone@example.com")
    async with app.runtime.store.tx() as tx:
        user = await tx.users.get(uuid.UUID(user_id))
        assert user is not None
        user.is_active = False
    assert_invalid_token(*await confirm(app, token))


@pytest.mark.parametrize(
    "body",
    [{}, {"token": "x"}, {"password": "x"}, {"token": 1, "password": "long enough password"}],
)
async def test_confirm_body_errors_use_the_error_shape(app: Served, body: dict) -> None:
    response = await app.client.post(CONFIRM, json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["details"]
