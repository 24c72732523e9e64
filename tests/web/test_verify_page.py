"""The verify-email page in a real Chromium: registration email → link → one press verifies;
opening the link (by a person or a scanner) verifies nothing (docs/branding.md, "The pages")."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.conftest import PASSWORD, Served
from tests.web.conftest import APP_URL, Tab, checked_tab, shown, state

pytestmark = pytest.mark.asyncio(loop_scope="package")  # one Chromium: conftest.py

VERIFY_LINK = re.compile(r"(http://[^\s\"<>]+/verify-email#token=([A-Za-z0-9_-]{43,}))")


async def register(site: Served, email: str) -> tuple[str, str]:
    """Sign up over the API and return (link, token) from the verification email."""
    response = await site.client.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert response.status_code == 202
    assert site.smtp is not None
    mails = await site.smtp.sink.wait_for(1, to=email)
    found = VERIFY_LINK.search(mails[-1].text())
    assert found, "no verification link in the email"
    return found.group(1), found.group(2)


async def login(site: Served, email: str) -> int:
    response = await site.client.post("/auth/login", json={"email": email, "password": PASSWORD})
    return response.status_code


async def test_one_press_verifies_the_address(site: Served, any_tab: Tab) -> None:
    link, token = await register(site, "lea@example.com")
    page = any_tab.page

    await page.goto(link)
    await shown(any_tab, "ready")
    assert page.url == f"{site.url}/verify-email"
    await any_tab.shot("verify-email-ready")
    assert await login(site, "lea@example.com") == 401  # opening the page verified nothing

    await page.get_by_role("button", name="Verify my email address").click()
    await shown(any_tab, "done")
    await any_tab.shot("verify-email-done")
    assert await state(any_tab, "done").get_by_role("link").get_attribute("href") == APP_URL
    assert await login(site, "lea@example.com") == 200

    for request in any_tab.recorder.requests:
        assert token not in request["url"].split("#", 1)[0]
        assert all(token not in value for value in request["headers"].values())
        if token in request["body"]:
            assert request["url"].endswith("/auth/verify-email")

    await page.reload()
    await shown(any_tab, "done")
    assert len(any_tab.recorder.posts("/auth/verify-email")) == 1


async def test_a_used_link_says_so(site: Served, any_tab: Tab) -> None:
    link, token = await register(site, "max@example.com")
    used = await site.client.post("/auth/verify-email", json={"token": token})
    assert used.status_code == 200

    await any_tab.page.goto(link)
    await shown(any_tab, "ready")
    await any_tab.page.get_by_role("button", name="Verify my email address").click()
    await shown(any_tab, "invalid")
    await any_tab.shot("verify-email-invalid")


async def test_opening_the_link_many_times_verifies_nothing(site: Served, browser: Any) -> None:
    link, token = await register(site, "ned@example.com")
    for _ in range(3):
        async with checked_tab(browser) as scanner:
            await scanner.page.goto(link)
            await shown(scanner, "ready")
            await scanner.page.reload()
            await shown(scanner, "ready")
            assert scanner.recorder.posts("/auth/verify-email") == []
    assert await login(site, "ned@example.com") == 401

    verified = await site.client.post("/auth/verify-email", json={"token": token})
    assert verified.status_code == 200


async def test_without_a_token_the_page_asks_for_the_code(site: Served, tab: Tab) -> None:
    await tab.page.goto(f"{site.url}/verify-email")
    await shown(tab, "code")
    await tab.shot("verify-email-code")
