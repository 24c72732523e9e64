"""The account's sessions (list, end one), password change, and what disabling an account or
resetting its password does to its sessions and links."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import (
    EVERY_BACKEND,
    LINK,
    NEW_PASSWORD,
    PASSWORD,
    FakeClock,
    Served,
    Smtp,
    make_settings,
    serve,
)

BACKENDS = EVERY_BACKEND  # SQLite with process memory; PostgreSQL with Redis

SESSIONS = "/auth/sessions"
CHANGE = "/auth/password/change"
CONFIRM = "/auth/password-reset/confirm"
FIELDS = {"id", "created_at", "last_seen_at", "expires_at", "current", "device", "place"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(app: Served, email: str, password: str = PASSWORD) -> httpx.Response:
    return await app.client.post("/auth/login", json={"email": email, "password": password})


async def token_for(app: Served, email: str, password: str = PASSWORD) -> str:
    response = await login(app, email, password)
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def me(app: Served, token: str) -> int:
    return (await app.client.get("/auth/me", headers=bearer(token))).status_code


async def sessions(app: Served, token: str) -> list[dict[str, Any]]:
    response = await app.client.get(SESSIONS, headers=bearer(token))
    assert response.status_code == 200, response.text
    listed: list[dict[str, Any]] = response.json()["sessions"]
    return listed


async def current_id(app: Served, token: str) -> str:
    """The id of the session behind `token` (the one listed as current)."""
    [mine] = [s for s in await sessions(app, token) if s["current"]]
    session_id: str = mine["id"]
    return session_id


async def end(app: Served, token: str, session_id: str) -> httpx.Response:
    return await app.client.delete(f"{SESSIONS}/{session_id}", headers=bearer(token))


async def change(
    app: Served, token: str, current: str = PASSWORD, new: str = NEW_PASSWORD
) -> httpx.Response:
    return await app.client.post(
        CHANGE, json={"current_password": current, "password": new}, headers=bearer(token)
    )


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    code: str = body["error"]["code"]
    return code


def at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- GET /auth/sessions -------------------------------------------------------------------------


async def test_list_shows_the_callers_sessions_most_recently_used_first(app: Served) -> None:
    await app.create_user("list@example.com")
    first = await token_for(app, "list@example.com")
    app.clock.advance(120)
    second = await token_for(app, "list@example.com")
    app.clock.advance(120)
    third = await token_for(app, "list@example.com")
    ids = [await current_id(app, t) for t in (first, second, third)]
    app.clock.advance(120)
    assert await me(app, first) == 200  # `first` is now used more recently than `second`
    app.clock.advance(30)

    listed = await sessions(app, third)

    assert [s["id"] for s in listed] == [ids[2], ids[0], ids[1]]
    assert [s["current"] for s in listed] == [True, False, False]
    assert all(set(s) == FIELDS for s in listed)


async def test_list_entries_carry_the_session_times_and_never_a_token(app: Served) -> None:
    await app.create_user("times@example.com")
    started = app.clock.now
    token = await token_for(app, "times@example.com")
    app.clock.advance(300)

    response = await app.client.get(SESSIONS, headers=bearer(token))

    [entry] = response.json()["sessions"]
    assert at(entry["created_at"]) == started
    assert at(entry["last_seen_at"]) == app.clock.now  # this request touched it
    assert at(entry["expires_at"]) == started + timedelta(seconds=app.settings.session_max_ttl)
    assert token not in response.text


async def test_list_leaves_out_other_accounts_and_ended_sessions(app: Served) -> None:
    await app.create_user("mine@example.com")
    await app.create_user("theirs@example.com")
    kept = await token_for(app, "mine@example.com")
    gone = await token_for(app, "mine@example.com")
    gone_id = await current_id(app, gone)
    theirs = await token_for(app, "theirs@example.com")
    assert (await app.client.post("/auth/logout", headers=bearer(gone))).status_code == 204

    listed = await sessions(app, kept)

    assert [s["id"] for s in listed] == [await current_id(app, kept)]
    assert gone_id not in {s["id"] for s in listed}
    assert len(await sessions(app, theirs)) == 1


async def test_sessions_endpoints_need_a_live_bearer(app: Served) -> None:
    some_id = uuid.uuid4()
    for response in (
        await app.client.get(SESSIONS),
        await app.client.get(SESSIONS, headers=bearer("A" * 43)),
        await app.client.delete(f"{SESSIONS}/{some_id}"),
        await app.client.post(CHANGE, json={"current_password": PASSWORD, "password": "x"}),
    ):
        assert response.status_code == 401
        assert error_code(response) == "not_authenticated"


# -- DELETE /auth/sessions/{id} -----------------------------------------------------------------


async def test_ending_another_own_session_kills_it_on_its_next_request(app: Served) -> None:
    await app.create_user("end@example.com")
    keep = await token_for(app, "end@example.com")
    other = await token_for(app, "end@example.com")
    other_id = await current_id(app, other)

    response = await end(app, keep, other_id)

    assert response.status_code == 204
    assert response.content == b""
    denied = await app.client.get("/auth/me", headers=bearer(other))
    assert denied.status_code == 401
    assert error_code(denied) == "not_authenticated"
    assert await me(app, keep) == 200
    assert [s["id"] for s in await sessions(app, keep)] == [await current_id(app, keep)]


async def test_ending_the_current_session_logs_it_out(app: Served) -> None:
    await app.create_user("self@example.com")
    token = await token_for(app, "self@example.com")

    assert (await end(app, token, await current_id(app, token))).status_code == 204

    assert await me(app, token) == 401


async def test_ending_an_already_ended_session_is_404(app: Served) -> None:
    await app.create_user("twice@example.com")
    keep = await token_for(app, "twice@example.com")
    other_id = await current_id(app, await token_for(app, "twice@example.com"))
    assert (await end(app, keep, other_id)).status_code == 204

    again = await end(app, keep, other_id)

    assert again.status_code == 404
    assert error_code(again) == "not_found"


async def test_ending_an_expired_session_is_404(app: Served) -> None:
    await app.create_user("stale@example.com")
    stale_id = await current_id(app, await token_for(app, "stale@example.com"))
    app.clock.advance(app.settings.session_idle_ttl + 1)
    token = await token_for(app, "stale@example.com")

    response = await end(app, token, stale_id)

    assert response.status_code == 404
    assert error_code(response) == "not_found"


async def test_ending_an_unknown_session_is_404(app: Served) -> None:
    await app.create_user("unknown@example.com")
    token = await token_for(app, "unknown@example.com")

    response = await end(app, token, str(uuid.uuid4()))

    assert response.status_code == 404
    assert error_code(response) == "not_found"


async def test_another_accounts_session_cannot_be_ended_and_looks_unknown(app: Served) -> None:
    await app.create_user("mallory@example.com")
    await app.create_user("victim@example.com")
    attacker = await token_for(app, "mallory@example.com")
    victim = await token_for(app, "victim@example.com")
    victim_id = await current_id(app, victim)

    response = await end(app, attacker, victim_id)
    unknown = await end(app, attacker, str(uuid.uuid4()))

    assert response.status_code == 404
    assert response.json() == unknown.json()
    assert await me(app, victim) == 200
    assert [s["id"] for s in await sessions(app, victim)] == [victim_id]


async def test_ending_a_session_by_a_non_uuid_id_is_422(app: Served) -> None:
    await app.create_user("shape@example.com")
    token = await token_for(app, "shape@example.com")

    response = await end(app, token, "not-a-uuid")

    assert response.status_code == 422
    assert error_code(response) == "invalid_request"
    assert await me(app, token) == 200


# -- POST /auth/password/change -----------------------------------------------------------------


async def test_password_change_returns_a_new_session_and_ends_every_other(app: Served) -> None:
    user_id = await app.create_user("change@example.com")
    caller = await token_for(app, "change@example.com")
    elsewhere = await token_for(app, "change@example.com")

    response = await change(app, caller)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"email", "token", "user_id"}
    assert body["email"] == "change@example.com"
    assert body["user_id"] == user_id
    assert body["token"] not in (caller, elsewhere)
    assert await me(app, caller) == 401
    assert await me(app, elsewhere) == 401
    [only] = await sessions(app, body["token"])
    assert only["current"] is True
    assert (await login(app, "change@example.com", NEW_PASSWORD)).status_code == 200
    assert (await login(app, "change@example.com", PASSWORD)).status_code == 401


async def test_password_change_cannot_cancel_a_reset_link_in_the_owners_mailbox(
    app: Served,
) -> None:
    # Someone who knows the password (a thief) must not be able to kill the owner's way back
    # in by changing it: the mailbox outranks the password, so the link still works, and the
    # reset then ends the session that made the change.
    await app.create_user("links@example.com")
    _, reset_token = await app.reset_link("links@example.com")
    token = await token_for(app, "links@example.com")
    changed = await change(app, token)
    assert changed.status_code == 200

    response = await app.client.post(
        CONFIRM, json={"token": reset_token, "password": "yet another fine passphrase"}
    )

    assert response.status_code == 200
    assert await me(app, changed.json()["token"]) == 401
    assert (await login(app, "links@example.com", NEW_PASSWORD)).status_code == 401
    assert (await login(app, "links@example.com", "yet another fine passphrase")).status_code == 200


async def test_password_change_sends_the_changed_notice_without_a_token(app: Served) -> None:
    assert app.smtp is not None
    await app.create_user("notice@example.com")
    old = await token_for(app, "notice@example.com")

    response = await change(app, old)

    assert response.status_code == 200
    [mail] = await app.smtp.sink.wait_for(1, to="notice@example.com")
    assert "changed" in str(mail.message["Subject"]).lower()
    for part in (mail.text(), mail.html()):
        assert LINK.search(part) is None
        assert "token" not in part.lower()
        assert old not in part
        assert response.json()["token"] not in part


async def test_wrong_current_password_is_403_and_changes_nothing(app: Served) -> None:
    assert app.smtp is not None
    await app.create_user("wrong@example.com")
    token = await token_for(app, "wrong@example.com")

    response = await change(app, token, current="not the current password")

    assert response.status_code == 403
    assert error_code(response) == "incorrect_password"
    assert await me(app, token) == 200
    assert (await login(app, "wrong@example.com", PASSWORD)).status_code == 200
    assert (await login(app, "wrong@example.com", NEW_PASSWORD)).status_code == 401
    await app.settle()
    assert app.smtp.sink.to("wrong@example.com") == []


async def test_weak_new_password_is_422_with_reasons_and_changes_nothing(app: Served) -> None:
    await app.create_user("weak@example.com")
    token = await token_for(app, "weak@example.com")

    response = await change(app, token, new="short")

    assert response.status_code == 422
    assert error_code(response) == "weak_password"
    assert "too_short" in {d["code"] for d in response.json()["error"]["details"]}
    assert await me(app, token) == 200
    assert (await login(app, "weak@example.com", PASSWORD)).status_code == 200


async def test_wrong_current_passwords_are_throttled_per_account(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    settings = make_settings(
        tmp_path, **backend_settings, smtp_url=smtp.url, rate_limit_login="3/minute"
    )
    async with serve(settings, clock, smtp) as app:
        await app.create_user("guess@example.com")
        token = await token_for(app, "guess@example.com")
        codes = [(await change(app, token, current="a wrong guess!!")).status_code for _ in "1234"]
        assert codes == [403, 403, 403, 429]

        blocked = await change(app, token)  # even the right password waits out the window
        assert blocked.status_code == 429
        assert error_code(blocked) == "rate_limited"
        assert int(blocked.headers["retry-after"]) >= 1
        assert await me(app, token) == 200

        await app.create_user("bystander@example.com")  # same client, another account
        assert (await change(app, await token_for(app, "bystander@example.com"))).status_code == 200


# -- disabling an account -----------------------------------------------------------------------


async def test_disabling_an_account_ends_its_sessions_and_login_at_once(app: Served) -> None:
    await app.create_user("off@example.com")
    tokens = [await token_for(app, "off@example.com") for _ in range(2)]

    await app.runtime.accounts.set_active("off@example.com", False)

    for token in tokens:
        response = await app.client.get(SESSIONS, headers=bearer(token))
        assert response.status_code == 401
        assert error_code(response) == "not_authenticated"
    refused = await login(app, "off@example.com")
    assert refused.status_code == 401
    assert error_code(refused) == "invalid_credentials"


async def test_disabling_an_account_kills_its_reset_links(app: Served) -> None:
    await app.create_user("quiet@example.com")
    _, reset_token = await app.reset_link("quiet@example.com")

    await app.runtime.accounts.set_active("quiet@example.com", False)

    confirm = await app.client.post(CONFIRM, json={"token": reset_token, "password": NEW_PASSWORD})
    assert confirm.status_code == 400
    assert error_code(confirm) == "invalid_token"


async def test_a_disabled_account_asking_for_a_reset_gets_no_email(app: Served) -> None:
    assert app.smtp is not None
    await app.create_user("silent@example.com")
    await app.runtime.accounts.set_active("silent@example.com", False)

    assert (await app.request_reset("silent@example.com")).status_code == 200
    await app.settle()

    assert app.smtp.sink.to("silent@example.com") == []


async def test_enabling_again_allows_login_but_old_sessions_stay_dead(app: Served) -> None:
    await app.create_user("back@example.com")
    old = await token_for(app, "back@example.com")
    await app.runtime.accounts.set_active("back@example.com", False)

    await app.runtime.accounts.set_active("back@example.com", True)

    fresh = await token_for(app, "back@example.com")
    assert await me(app, fresh) == 200
    assert await me(app, old) == 401
    assert [s["current"] for s in await sessions(app, fresh)] == [True]


# -- password reset -----------------------------------------------------------------------------


async def test_after_a_password_reset_only_the_new_session_is_listed(app: Served) -> None:
    await app.create_user("reset@example.com")
    before = [await token_for(app, "reset@example.com") for _ in range(2)]
    _, reset_token = await app.reset_link("reset@example.com")

    response = await app.client.post(CONFIRM, json={"token": reset_token, "password": NEW_PASSWORD})

    assert response.status_code == 200
    [only] = await sessions(app, response.json()["token"])
    assert only["current"] is True
    for token in before:
        assert await me(app, token) == 401


# -- expiry -------------------------------------------------------------------------------------


async def test_an_idle_session_leaves_the_list_and_answers_401(app: Served) -> None:
    idle = app.settings.session_idle_ttl
    await app.create_user("nap@example.com")
    sleeper = await token_for(app, "nap@example.com")
    sleeper_id = await current_id(app, sleeper)
    app.clock.advance(idle // 2)
    busy = await token_for(app, "nap@example.com")
    app.clock.advance(idle - idle // 2)  # `sleeper` unused for exactly the idle timeout

    assert sleeper_id in {s["id"] for s in await sessions(app, busy)}
    app.clock.advance(1)
    assert sleeper_id not in {s["id"] for s in await sessions(app, busy)}
    assert await me(app, sleeper) == 401


async def test_a_busy_session_leaves_the_list_at_its_absolute_lifetime(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    settings = make_settings(
        tmp_path,
        **backend_settings,
        smtp_url=smtp.url,
        session_idle_ttl=3600,
        session_max_ttl=4 * 3600,
    )
    async with serve(settings, clock, smtp) as app:
        await app.create_user("old@example.com")
        oldest = await token_for(app, "old@example.com")
        oldest_id = await current_id(app, oldest)
        app.clock.advance(1800)
        younger = await token_for(app, "old@example.com")
        assert await me(app, oldest) == 200
        for step in (3000, 3000, 3000, 3000, 600):  # to exactly the absolute lifetime
            app.clock.advance(step)
            assert await me(app, oldest) == 200
            assert oldest_id in {s["id"] for s in await sessions(app, younger)}

        app.clock.advance(1)

        assert oldest_id not in {s["id"] for s in await sessions(app, younger)}
        assert await me(app, oldest) == 401
        assert await me(app, younger) == 200
