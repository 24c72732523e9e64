"""Login, /auth/me, logout, and the session lifetimes (docs/api.md)."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from chaser_auth.domain.passwords import PasswordHasher
from tests.conftest import EVERY_BACKEND, PASSWORD, FakeClock, Served, Smtp, make_settings, serve

BACKENDS = EVERY_BACKEND  # SQLite with process memory; PostgreSQL with Redis


async def login(app: Served, email: str, password: str = PASSWORD) -> tuple[int, dict]:
    response = await app.client.post("/auth/login", json={"email": email, "password": password})
    return response.status_code, response.json()


async def me(app: Served, token: str) -> int:
    response = await app.client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    return response.status_code


async def test_login_returns_an_auth_response_for_any_spelling_of_the_address(app: Served) -> None:
    user_id = await app.create_user("Carol@Example.com")
    status, body = await login(app, "  carol@EXAMPLE.com")
    assert status == 200
    assert body["email"] == "Carol@example.com"
    assert body["user_id"] == user_id
    assert len(body["token"]) >= 43
    response = await app.client.get(
        "/auth/me", headers={"Authorization": f"Bearer {body['token']}"}
    )
    assert response.status_code == 200
    assert response.json()["email_verified"] is True
    assert response.json()["email"] == "Carol@example.com"


async def test_every_login_failure_looks_the_same(app: Served) -> None:
    await app.create_user("dave@example.com")
    answers = [
        await app.client.post("/auth/login", json={"email": email, "password": password})
        for email, password in (
            ("dave@example.com", "wrong password entirely"),
            ("nobody@example.com", PASSWORD),
            ("not an address", PASSWORD),
        )
    ]
    bodies = {a.content for a in answers}
    assert {a.status_code for a in answers} == {401}
    assert len(bodies) == 1
    assert answers[0].json()["error"]["code"] == "invalid_credentials"


async def test_every_login_failure_pays_for_one_argon2_verification(app: Served) -> None:
    """The code path behind equal timing (bench/login_timing.py measures the timing itself):
    an unknown address verifies the dummy hash; a wrong password, an unverified and a disabled
    account verify their stored hash — one verification each, all ending in the same 401."""
    await app.create_user("vera@example.com")
    await app.runtime.accounts.create("unverified@example.com", PASSWORD, verified=False)
    await app.create_user("off@example.com")
    await app.runtime.accounts.set_active("off@example.com", False)
    counts = app.runtime.hasher.verifications
    cases = (
        ("nobody@example.com", PASSWORD, "dummy"),
        ("not an address", PASSWORD, "dummy"),
        ("vera@example.com", "wrong password entirely", "stored"),
        ("unverified@example.com", PASSWORD, "stored"),
        ("off@example.com", PASSWORD, "stored"),
    )
    for email, password, kind in cases:
        before = counts.copy()
        response = await app.client.post("/auth/login", json={"email": email, "password": password})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_credentials"
        assert counts - before == {kind: 1}, email


async def test_a_login_against_an_older_cheaper_hash_does_the_configured_work(
    app: Served,
) -> None:
    """A hash made before the cost was raised is verified and then topped up to the configured
    work (argon2 memory blocks filled), so such an account costs what an unknown address costs;
    the right password still logs in and upgrades the hash, after which no top-up is needed."""
    user_id = uuid.UUID(await app.create_user("early@example.com"))
    settings = app.settings
    older = PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_cost // 2,
        parallelism=settings.argon2_parallelism,
    )
    async with app.runtime.store.tx() as tx:
        await tx.users.replace_hash(user_id, await older.hash(PASSWORD))
    hasher = app.runtime.hasher

    async def attempt(email: str, password: str, status: int) -> tuple[Counter[str], int]:
        kinds, blocks = hasher.verifications.copy(), hasher.blocks.copy()
        response = await app.client.post("/auth/login", json={"email": email, "password": password})
        assert response.status_code == status, response.text
        return hasher.verifications - kinds, (hasher.blocks - blocks).total()

    unknown_kinds, configured = await attempt("nobody@example.com", PASSWORD, 401)
    assert unknown_kinds == {"dummy": 1}
    wrong_kinds, wrong_blocks = await attempt("early@example.com", "wrong password entirely", 401)
    assert wrong_kinds == {"stored": 1, "padding": 1}
    assert wrong_blocks == configured

    right_kinds, right_blocks = await attempt("early@example.com", PASSWORD, 200)
    assert right_kinds == {"stored": 1, "padding": 1}
    assert right_blocks == configured
    async with app.runtime.store.tx() as tx:
        upgraded = await tx.users.get(user_id)
    assert upgraded is not None and upgraded.password_hash is not None
    assert not hasher.needs_rehash(upgraded.password_hash)  # rehashed at the configured cost

    again_kinds, again_blocks = await attempt("early@example.com", PASSWORD, 200)
    assert again_kinds == {"stored": 1}
    assert again_blocks == configured


async def test_logout_ends_the_session_on_the_next_request(app: Served) -> None:
    await app.create_user("erin@example.com")
    _, first = await login(app, "erin@example.com")
    _, second = await login(app, "erin@example.com")
    out = await app.client.post(
        "/auth/logout", headers={"Authorization": f"Bearer {first['token']}"}
    )
    assert out.status_code == 204
    assert await me(app, first["token"]) == 401
    assert await me(app, second["token"]) == 200


async def test_missing_or_bogus_bearer_is_401_in_the_error_shape(app: Served) -> None:
    """With a challenge (docs/integration.md): `Bearer realm="chaser-auth"` when no bearer
    token came, and `error="invalid_token"` added when one came and is no live session."""
    await app.create_user("frida@example.com")
    _, ended = await login(app, "frida@example.com")
    bearer = {"Authorization": f"Bearer {ended['token']}"}
    assert (await app.client.post("/auth/logout", headers=bearer)).status_code == 204
    plain = 'Bearer realm="chaser-auth"'
    refused = 'Bearer realm="chaser-auth", error="invalid_token"'
    for headers, challenge in (
        ({}, plain),
        ({"Authorization": "Basic abc"}, plain),
        ({"Authorization": "Bearer nope"}, refused),
        ({"Authorization": "Bearer " + "A" * 43}, refused),
        (bearer, refused),  # logged out
    ):
        for method, path in (("GET", "/auth/me"), ("GET", "/auth/sessions")):
            response = await app.client.request(method, path, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "not_authenticated"
            assert response.headers["www-authenticate"] == challenge, (headers, path)
    # Every 401 carries a challenge, a failed login's too (RFC 9110).
    failed = await app.client.post(
        "/auth/login", json={"email": "frida@example.com", "password": "not it, not at all"}
    )
    assert failed.status_code == 401 and failed.headers["www-authenticate"] == plain


async def test_session_dies_after_the_idle_timeout(app: Served) -> None:
    await app.create_user("idle@example.com")
    _, body = await login(app, "idle@example.com")
    app.clock.advance(app.settings.session_idle_ttl)
    assert await me(app, body["token"]) == 200  # exactly at the limit: alive, and touched
    app.clock.advance(app.settings.session_idle_ttl + 1)
    assert await me(app, body["token"]) == 401


async def test_session_dies_at_its_absolute_lifetime_even_when_busy(
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
        await app.create_user("busy@example.com")
        _, body = await login(app, "busy@example.com")
        for _ in range(4):
            app.clock.advance(3000)
            assert await me(app, body["token"]) == 200
        app.clock.advance(3 * 3600)
        assert await me(app, body["token"]) == 401


async def test_failed_logins_are_throttled_per_account_and_address(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    settings = make_settings(
        tmp_path, **backend_settings, smtp_url=smtp.url, rate_limit_login="3/minute"
    )
    async with serve(settings, clock, smtp) as app:
        await app.create_user("frank@example.com")
        codes = [(await login(app, "frank@example.com", "not the password!!"))[0] for _ in range(4)]
        assert codes == [401, 401, 401, 429]
        response = await app.client.post(
            "/auth/login", json={"email": "frank@example.com", "password": PASSWORD}
        )
        assert response.status_code == 429  # even the right password waits out the window
        assert response.headers["x-ratelimit-scope"] == "login"
        assert int(response.headers["retry-after"]) >= 1
        # another account from the same address is not affected
        await app.create_user("gina@example.com")
        assert (await login(app, "gina@example.com"))[0] == 200


async def test_login_upgrades_the_hash_when_the_cost_settings_change(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    async with serve(
        make_settings(tmp_path, **backend_settings, smtp_url=smtp.url), clock, smtp
    ) as app:
        user_id = await app.create_user("cost@example.com")
        async with app.runtime.store.tx() as tx:
            user = await tx.users.get(uuid.UUID(user_id))
            assert user is not None and user.password_hash is not None
            before = user.password_hash
            changed_before = user.password_changed_at
    assert "t=1" in before

    stronger = make_settings(tmp_path, **backend_settings, smtp_url=smtp.url, argon2_time_cost=2)
    async with serve(stronger, clock, smtp) as app:
        assert (await login(app, "cost@example.com"))[0] == 200
        async with app.runtime.store.tx() as tx:
            user = await tx.users.get(uuid.UUID(user_id))
            assert user is not None and user.password_hash is not None
            after = user.password_hash
            changed_at = user.password_changed_at
        assert "t=2" in after and after != before
        assert (await login(app, "cost@example.com"))[0] == 200  # the new hash verifies
        assert changed_at == changed_before  # an upgrade is not a password change
