"""CORS (docs/browser-apps.md): the allowlist `CHASER_AUTH_CORS_ORIGINS` is answered with
credentials, every other origin gets no `Access-Control-*` header and a refused preflight in the
one error shape; the pages stay same-origin. Over a real socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import FakeClock, Served, Smtp, make_settings, serve

APP = "http://127.0.0.1:5173"
OTHER = "https://evil.example"


@pytest.fixture
async def cors_app(tmp_path: Path, smtp: Smtp, clock: FakeClock) -> AsyncIterator[Served]:
    settings = make_settings(
        tmp_path, smtp_url=smtp.url, cors_origins=f" {APP} , https://app.example.com/ "
    )
    async with serve(settings, clock, smtp) as served:
        yield served


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


async def preflight(
    app: Served, path: str, origin: str, method: str = "POST", headers: str | None = None
) -> httpx.Response:
    sent = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        sent["Access-Control-Request-Headers"] = headers
    return await app.client.options(path, headers=sent)


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/auth/login", "POST"),
        ("/auth/me", "GET"),
        ("/auth/sessions", "GET"),
        ("/auth/sessions/00000000-0000-0000-0000-000000000000", "DELETE"),
        ("/auth/password/change", "POST"),
        ("/auth/password-reset/request", "POST"),
        ("/auth/verify-email", "POST"),
        ("/auth/logout", "POST"),
    ],
)
async def test_an_allowed_origin_s_preflight_is_answered_on_every_api_route(
    cors_app: Served, path: str, method: str
) -> None:
    response = await preflight(
        cors_app, path, APP, method, "content-type, chaser-session, authorization"
    )
    assert response.status_code == 200, response.text
    headers = cors_headers(response)
    assert headers["access-control-allow-origin"] == APP
    assert headers["access-control-allow-credentials"] == "true"
    assert method in headers["access-control-allow-methods"]
    allowed = headers["access-control-allow-headers"].lower()
    for name in ("content-type", "chaser-session", "authorization"):
        assert name in allowed


async def test_an_origin_given_with_a_trailing_slash_is_the_origin(cors_app: Served) -> None:
    response = await preflight(cors_app, "/auth/login", "https://app.example.com")
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"


async def test_another_origin_s_preflight_is_refused_in_the_error_shape(cors_app: Served) -> None:
    response = await preflight(cors_app, "/auth/login", OTHER, headers="content-type")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "origin_not_allowed"
    assert cors_headers(response) == {}
    assert response.headers["x-request-id"]


async def test_a_preflight_asking_for_an_unlisted_header_is_refused(cors_app: Served) -> None:
    response = await preflight(cors_app, "/auth/login", APP, headers="x-something-else")
    assert response.status_code == 403
    assert cors_headers(response) == {}


async def test_answers_carry_credentials_for_listed_origins_only(cors_app: Served) -> None:
    mine = await cors_app.client.get("/auth/me", headers={"Origin": APP})
    assert mine.status_code == 401
    assert mine.headers["access-control-allow-origin"] == APP
    assert mine.headers["access-control-allow-credentials"] == "true"
    assert "X-Request-ID" in mine.headers["access-control-expose-headers"]
    assert "Origin" in mine.headers["vary"]

    theirs = await cors_app.client.get("/auth/me", headers={"Origin": OTHER})
    assert theirs.status_code == 401
    assert cors_headers(theirs) == {}
    assert "Origin" in theirs.headers["vary"]


async def test_the_reset_request_answers_an_allowed_origin_with_the_same_bytes(
    cors_app: Served,
) -> None:
    plain = await cors_app.request_reset("someone@example.com")
    crossed = await cors_app.request_reset("someone@example.com", headers={"Origin": APP})
    refused = await cors_app.request_reset("someone@example.com", headers={"Origin": OTHER})
    assert plain.status_code == crossed.status_code == refused.status_code == 200
    assert plain.content == crossed.content == refused.content
    assert crossed.headers["access-control-allow-origin"] == APP
    assert cors_headers(plain) == cors_headers(refused) == {}


async def test_the_pages_stay_same_origin(cors_app: Served) -> None:
    page = await cors_app.client.get("/forgot-password", headers={"Origin": APP})
    assert page.status_code == 200
    assert cors_headers(page) == {}
    asked = await preflight(cors_app, "/forgot-password", APP, "GET")
    assert asked.status_code == 405
    assert cors_headers(asked) == {}


async def test_without_an_allowlist_no_origin_is_answered(app: Served) -> None:
    asked = await preflight(app, "/auth/login", APP)
    assert asked.status_code == 403
    assert asked.json()["error"]["code"] == "origin_not_allowed"
    answered = await app.client.get("/auth/me", headers={"Origin": APP})
    assert cors_headers(answered) == {}


@pytest.mark.parametrize(
    "bad", ["app.example.com", "https://app.example.com/path", "ftp://x.example", "https://"]
)
def test_an_allowlist_entry_that_is_no_origin_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="origin"):
        make_settings(tmp_path, cors_origins=f"{APP},{bad}")
