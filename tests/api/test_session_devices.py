"""Device-aware sessions (docs/api.md): each session shows the browser or client it was opened
from and the network it was last used from, in `GET /auth/sessions` and in the "password
changed" and (opt-in) "new sign-in" notices. Over a real socket, with a real SMTP server; the
client addresses come through X-Forwarded-For from a trusted proxy (127.0.0.1)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    EVERY_BACKEND,
    NEW_PASSWORD,
    PASSWORD,
    FakeClock,
    Served,
    Smtp,
    make_settings,
    serve,
)

BACKENDS = EVERY_BACKEND
EMAIL = "dora@example.com"
FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0"
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)


def from_(address: str, agent: str | None = None) -> dict[str, str]:
    headers = {"X-Forwarded-For": address}
    if agent is not None:
        headers["User-Agent"] = agent
    return headers


async def start(tmp_path: Path, smtp: Smtp, clock: FakeClock, **extra: Any) -> Any:
    settings = make_settings(tmp_path, smtp_url=smtp.url, trusted_proxies="127.0.0.1", **extra)
    return serve(settings, clock, smtp)


@pytest.fixture
async def site(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, str]
) -> AsyncIterator[Served]:
    async with await start(tmp_path, smtp, clock, **backend_settings) as served:
        yield served


async def login(app: Served, headers: dict[str, str], password: str = PASSWORD) -> str:
    response = await app.client.post(
        "/auth/login", json={"email": EMAIL, "password": password}, headers=headers
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def listed(app: Served, token: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = await app.client.get(
        "/auth/sessions", headers={"Authorization": f"Bearer {token}", **headers}
    )
    assert response.status_code == 200
    sessions: list[dict[str, Any]] = response.json()["sessions"]
    return sessions


async def test_the_list_shows_each_session_s_browser_and_place(site: Served) -> None:
    await site.create_user(EMAIL)
    desktop = await login(site, from_("203.0.113.77", FIREFOX))
    await login(site, from_("2001:db8:1234:5678::1", IPHONE))
    await login(site, from_("198.51.100.9", "curl/8.5.0"))
    sessions = await listed(site, desktop, from_("203.0.113.77"))
    seen = {(s["device"], s["place"]) for s in sessions}
    assert seen == {
        ("Firefox 128 on Windows 10", "203.0.113.0/24"),
        ("Mobile Safari 17 on iOS 17", "2001:db8:1234::/48"),
        ("curl 8", "198.51.100.0/24"),
    }
    assert "203.0.113.77" not in str(sessions)  # never a whole address


async def test_the_place_follows_where_the_session_is_used(site: Served) -> None:
    await site.create_user(EMAIL)
    token = await login(site, from_("203.0.113.77", FIREFOX))
    await listed(site, token, from_("192.0.2.200"))
    [mine] = await listed(site, token, from_("192.0.2.200"))
    assert mine["place"] == "192.0.2.0/24"
    assert mine["device"] == "Firefox 128 on Windows 10"  # what opened it


async def test_a_client_without_a_user_agent_is_unknown(site: Served) -> None:
    await site.create_user(EMAIL)
    token = await login(site, {"X-Forwarded-For": "192.0.2.1", "User-Agent": ""})
    [mine] = await listed(site, token, {})
    assert mine["device"] == "Unknown client"


async def test_the_password_changed_notice_names_the_browser_and_place(site: Served) -> None:
    assert site.smtp is not None
    await site.create_user(EMAIL)
    token = await login(site, from_("203.0.113.77", FIREFOX))
    changed = await site.client.post(
        "/auth/password/change",
        json={"current_password": PASSWORD, "password": NEW_PASSWORD},
        headers={"Authorization": f"Bearer {token}", **from_("203.0.113.77", FIREFOX)},
    )
    assert changed.status_code == 200
    [notice] = await site.smtp.sink.wait_for(1, to=EMAIL)
    text = " ".join(notice.text().split())
    assert "Browser or app: Firefox 128 on Windows 10 Network: 203.0.113.0/24" in text
    assert "Browser or app: Firefox 128 on Windows 10" in notice.html()
    assert "Network: 203.0.113.0/24" in notice.html()


async def test_no_sign_in_notice_unless_asked_for(site: Served) -> None:
    assert site.smtp is not None
    await site.create_user(EMAIL)
    await login(site, from_("203.0.113.77", FIREFOX))
    await site.settle()
    assert site.smtp.sink.to(EMAIL) == []


async def test_the_opt_in_sign_in_notice(tmp_path: Path, smtp: Smtp, clock: FakeClock) -> None:
    async with await start(tmp_path, smtp, clock, notify_new_sign_in=True) as site:
        await site.create_user(EMAIL)
        await login(site, from_("2001:db8:1234:5678::1", IPHONE))
        [notice] = await smtp.sink.wait_for(1, to=EMAIL)
        assert notice.message["Subject"] == "New sign-in to your account"
        text = " ".join(notice.text().split())
        assert "Browser or app: Mobile Safari 17 on iOS 17 Network: 2001:db8:1234::/48" in text
        failed = await site.client.post(
            "/auth/login", json={"email": EMAIL, "password": "wrong password, surely"}
        )
        assert failed.status_code == 401
        await site.settle()
        assert len(smtp.sink.to(EMAIL)) == 1  # a failed login sends nothing
