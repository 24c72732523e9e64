"""The session as a cookie and its CSRF protection (docs/browser-apps.md), over a real socket:
the cookie's attributes, every session-opening route giving it on request, every bearer route
taking it, logout clearing it; state-changing cookie requests refused 403 `csrf_refused` without
the `Chaser-Session` header or from an origin off the list; bearer clients unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    EVERY_BACKEND,
    NEW_PASSWORD,
    PASSWORD,
    FakeClock,
    Served,
    Smtp,
    bound_socket,
    make_settings,
    serve,
    socket_url,
)

BACKENDS = EVERY_BACKEND
ALLOWED = "http://127.0.0.1:5173"
EVIL = "http://127.0.0.1:6666"
EMAIL = "carol@example.com"


@pytest.fixture
async def site(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, str]
) -> AsyncIterator[Served]:
    """Served on a socket whose URL is the public URL (http://127.0.0.1:<port>)."""
    sock = bound_socket()
    settings = make_settings(
        tmp_path,
        smtp_url=smtp.url,
        public_url=socket_url(sock),
        cors_origins=ALLOWED,
        **backend_settings,
    )
    async with serve(settings, clock, smtp, sock) as served:
        yield served


def browser_headers(origin: str, mode: str = "cookie") -> dict[str, str]:
    return {"Origin": origin, "Chaser-Session": mode}


def set_cookies(response: httpx.Response) -> list[SimpleCookie]:
    found = []
    for line in response.headers.get_list("set-cookie"):
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(line)
        found.append(cookie)
    return found


async def cookie_login(app: Served, origin: str | None = None, mode: str = "cookie") -> str:
    """Log in asking for the cookie; the cookie's value."""
    response = await app.client.post(
        "/auth/login",
        json={"email": EMAIL, "password": PASSWORD},
        headers=browser_headers(origin or app.url, mode),
    )
    assert response.status_code == 200, response.text
    [cookie] = set_cookies(response)
    [morsel] = cookie.values()
    return morsel.value


def with_cookie(app: Served, value: str, **headers: str) -> dict[str, str]:
    name = "chaser-session" if app.url.startswith("http://127.0.0.1") else "__Host-chaser-session"
    return {"Cookie": f"{name}={value}", **headers}


async def live(app: Served, value: str) -> bool:
    """The cookie's session is alive (a GET needs no CSRF check)."""
    bare = httpx.AsyncClient(base_url=app.url)  # no cookie jar of the shared client
    async with bare:
        response = await bare.get("/auth/me", headers=with_cookie(app, value))
    return response.status_code == 200


# -- the cookie --------------------------------------------------------------------------------


async def test_on_localhost_the_cookie_is_httponly_lax_and_not_secure(site: Served) -> None:
    await site.create_user(EMAIL)
    response = await site.client.post(
        "/auth/login",
        json={"email": EMAIL, "password": PASSWORD},
        headers=browser_headers(site.url),
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"email", "token", "user_id"}
    assert body["token"] == ""  # the cookie only: no script reads the session
    [line] = response.headers.get_list("set-cookie")
    attributes = [part.strip() for part in line.split(";")]
    assert attributes[0].startswith("chaser-session=")
    lowered = [a.lower() for a in attributes]
    assert "httponly" in lowered and "samesite=lax" in lowered and "path=/" in lowered
    assert "secure" not in lowered
    assert not any(a.startswith("domain") for a in lowered)
    assert f"max-age={site.settings.session_max_ttl}" in lowered


async def test_behind_https_the_cookie_is_host_prefixed_and_secure(
    tmp_path: Path, smtp: Smtp, clock: FakeClock
) -> None:
    settings = make_settings(tmp_path, smtp_url=smtp.url, public_url="https://auth.example.com")
    async with serve(settings, clock, smtp) as app:
        await app.create_user(EMAIL)
        response = await app.client.post(
            "/auth/login",
            json={"email": EMAIL, "password": PASSWORD},
            headers=browser_headers("https://auth.example.com"),
        )
        assert response.status_code == 200, response.text
        [line] = response.headers.get_list("set-cookie")
        attributes = [part.strip().lower() for part in line.split(";")]
        assert attributes[0].startswith("__host-chaser-session=")
        assert {"secure", "httponly", "samesite=lax", "path=/"} <= set(attributes)
        assert not any(a.startswith("domain") for a in attributes)
        [morsel] = set_cookies(response)[0].values()
        me = await app.client.get("/auth/me", headers={"Cookie": f"{morsel.key}={morsel.value}"})
        assert me.status_code == 200


async def test_both_gives_the_cookie_and_the_same_token(site: Served) -> None:
    await site.create_user(EMAIL)
    response = await site.client.post(
        "/auth/login",
        json={"email": EMAIL, "password": PASSWORD},
        headers=browser_headers(site.url, "both"),
    )
    [morsel] = set_cookies(response)[0].values()
    assert response.json()["token"] == morsel.value


async def test_a_bearer_client_gets_exactly_what_it_always_got(site: Served) -> None:
    await site.create_user(EMAIL)
    response = await site.client.post("/auth/login", json={"email": EMAIL, "password": PASSWORD})
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    token = response.json()["token"]
    assert len(token) >= 43
    # from any origin, without the header: bearer requests are never CSRF-checked
    out = await site.client.post(
        "/auth/logout", headers={"Authorization": f"Bearer {token}", "Origin": EVIL}
    )
    assert out.status_code == 204
    assert "set-cookie" not in out.headers


async def test_an_allowed_origin_gets_the_cookie_and_another_does_not(site: Served) -> None:
    await site.create_user(EMAIL)
    value = await cookie_login(site, ALLOWED)
    assert await live(site, value)
    refused = await site.client.post(
        "/auth/login",
        json={"email": EMAIL, "password": PASSWORD},
        headers=browser_headers(EVIL),
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "csrf_refused"
    assert "set-cookie" not in refused.headers


async def test_the_cookie_serves_every_bearer_route_and_logout_clears_it(site: Served) -> None:
    await site.create_user(EMAIL)
    value = await cookie_login(site)
    other = await cookie_login(site)
    bare = httpx.AsyncClient(base_url=site.url)
    async with bare:
        me = await bare.get("/auth/me", headers=with_cookie(site, value))
        assert me.json()["email"] == EMAIL
        listed = await bare.get("/auth/sessions", headers=with_cookie(site, value))
        assert len(listed.json()["sessions"]) == 2
        [theirs] = [s for s in listed.json()["sessions"] if not s["current"]]
        ended = await bare.delete(
            f"/auth/sessions/{theirs['id']}",
            headers=with_cookie(site, value, **browser_headers(site.url)),
        )
        assert ended.status_code == 204
        assert not await live(site, other)
        # Ending its own session by id is a logout too: the cookie is cleared.
        third = await cookie_login(site)
        seen = await bare.get("/auth/sessions", headers=with_cookie(site, third))
        [own] = [s["id"] for s in seen.json()["sessions"] if s["current"]]
        ended_own = await bare.delete(
            f"/auth/sessions/{own}", headers=with_cookie(site, third, **browser_headers(site.url))
        )
        assert ended_own.status_code == 204
        assert "Max-Age=0" in ended_own.headers["set-cookie"]
        assert not await live(site, third)
        out = await bare.post(
            "/auth/logout", headers=with_cookie(site, value, **browser_headers(ALLOWED))
        )
        assert out.status_code == 204
        [cleared] = out.headers.get_list("set-cookie")
        assert cleared.startswith("chaser-session=;") and "Max-Age=0" in cleared
        assert not await live(site, value)


async def test_password_change_on_the_cookie_gives_a_new_cookie(site: Served) -> None:
    await site.create_user(EMAIL)
    value = await cookie_login(site)
    bare = httpx.AsyncClient(base_url=site.url)
    async with bare:
        changed = await bare.post(
            "/auth/password/change",
            json={"current_password": PASSWORD, "password": NEW_PASSWORD},
            headers=with_cookie(site, value, **browser_headers(site.url)),
        )
    assert changed.status_code == 200, changed.text
    assert changed.json()["token"] == ""
    [fresh] = set_cookies(changed)[0].values()
    assert not await live(site, value)
    assert await live(site, fresh.value)


async def test_reset_confirm_and_verify_email_give_the_cookie(site: Served) -> None:
    assert site.smtp is not None
    registered = await site.client.post(
        "/auth/register", json={"email": EMAIL, "password": PASSWORD}
    )
    assert registered.status_code == 202
    [mail] = await site.smtp.sink.wait_for(1, to=EMAIL)
    token = mail.text().split("verify-email#token=")[1].split()[0]
    verified = await site.client.post(
        "/auth/verify-email", json={"token": token}, headers=browser_headers(site.url)
    )
    assert verified.status_code == 200, verified.text
    [first] = set_cookies(verified)[0].values()
    assert await live(site, first.value)

    _, reset = await site.reset_link(EMAIL)
    confirmed = await site.client.post(
        "/auth/password-reset/confirm",
        json={"token": reset, "password": NEW_PASSWORD},
        headers=browser_headers(ALLOWED),
    )
    assert confirmed.status_code == 200, confirmed.text
    [second] = set_cookies(confirmed)[0].values()
    assert await live(site, second.value)
    assert not await live(site, first.value)  # a reset ends every other session


async def test_a_refused_origin_spends_no_link(site: Served) -> None:
    await site.create_user(EMAIL)
    _, reset = await site.reset_link(EMAIL)
    body = {"token": reset, "password": NEW_PASSWORD}
    refused = await site.client.post(
        "/auth/password-reset/confirm", json=body, headers=browser_headers(EVIL)
    )
    assert refused.status_code == 403
    still = await site.client.post("/auth/password-reset/verify", json={"token": reset})
    assert still.status_code == 200


# -- CSRF --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "header"),  # a form post: no custom header
        ({"Origin": ALLOWED}, "header"),
        ({"Chaser-Session": "cookie", "Origin": EVIL}, "origin"),
        ({"Chaser-Session": "cookie", "Origin": "null"}, "origin"),
        ({"Chaser-Session": "cookie"}, "origin"),  # neither Origin nor Referer
        ({"Chaser-Session": "cookie", "Referer": f"{EVIL}/page"}, "origin"),
    ],
)
async def test_a_cookie_request_that_changes_state_must_prove_its_origin(
    site: Served, headers: dict[str, str], reason: str
) -> None:
    await site.create_user(EMAIL)
    value = await cookie_login(site)
    bare = httpx.AsyncClient(base_url=site.url)
    async with bare:
        for method, path, body in (
            ("POST", "/auth/logout", None),
            ("POST", "/auth/password/change", {"current_password": PASSWORD, "password": "x" * 20}),
            ("DELETE", "/auth/sessions/00000000-0000-0000-0000-000000000000", None),
        ):
            response = await bare.request(
                method, path, json=body, headers=with_cookie(site, value, **headers)
            )
            assert response.status_code == 403, (path, response.text)
            error = response.json()["error"]
            assert error["code"] == "csrf_refused"
            assert error["details"] == [{"reason": reason}]
    assert await live(site, value)  # nothing changed


async def test_a_referer_of_an_allowed_origin_will_do(site: Served) -> None:
    await site.create_user(EMAIL)
    value = await cookie_login(site)
    bare = httpx.AsyncClient(base_url=site.url)
    async with bare:
        out = await bare.post(
            "/auth/logout",
            headers=with_cookie(
                site, value, **{"Chaser-Session": "cookie", "Referer": f"{site.url}/x?y=1"}
            ),
        )
    assert out.status_code == 204
    assert not await live(site, value)


async def test_a_bearer_token_outranks_the_cookie(site: Served) -> None:
    await site.create_user(EMAIL)
    value = await cookie_login(site)
    login = await site.client.post("/auth/login", json={"email": EMAIL, "password": PASSWORD})
    token = login.json()["token"]
    bare = httpx.AsyncClient(base_url=site.url)
    async with bare:
        out = await bare.post(
            "/auth/logout", headers=with_cookie(site, value, Authorization=f"Bearer {token}")
        )
    assert out.status_code == 204
    assert await live(site, value)  # the bearer's session ended, not the cookie's
