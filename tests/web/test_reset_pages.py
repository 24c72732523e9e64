"""The forgot-password and reset-password pages in a real Chromium, against the real server and a
real SMTP server: the whole journey, every outcome the page can show, keyboard use, 320 px, and
where the token goes (docs/branding.md, "The pages").

Every test fails if the page logged a console error (the `tab` fixtures check it).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import (
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
from tests.web.conftest import APP_URL, Tab, checked_tab, shown, state

pytestmark = pytest.mark.asyncio(loop_scope="package")  # one Chromium: conftest.py

COMMON_PASSWORD = "qwertyuiopasdfgh"  # long enough for the page, on the breached-password list


async def login(site: Served, email: str, password: str) -> int:
    response = await site.client.post("/auth/login", json={"email": email, "password": password})
    return response.status_code


async def token_state(site: Served, token: str) -> int:
    response = await site.client.post("/auth/password-reset/verify", json={"token": token})
    return response.status_code


def assert_token_only_in_bodies(tab: Tab, token: str) -> None:
    """The token is in no URL the page asked for, no header (Referer…), and no body but those
    of verify and confirm."""
    assert tab.recorder.requests, "no requests were recorded"
    for request in tab.recorder.requests:
        wire_url = request["url"].split("#", 1)[0]  # a fragment is never sent
        assert token not in wire_url, request["url"]
        assert all(token not in value for value in request["headers"].values()), request
        if token in request["body"]:
            assert request["method"] == "POST"
            assert request["url"].endswith(
                ("/auth/password-reset/verify", "/auth/password-reset/confirm")
            ), request["url"]


async def assert_fits(tab: Tab) -> None:
    """Nothing wider than the viewport (no sideways scrolling at 320 px)."""
    overflow = await tab.page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0


# -- the journey, at desktop width and at 320 px ------------------------------------------------


async def test_forgot_email_link_new_password_then_login(site: Served, any_tab: Tab) -> None:
    tab = any_tab
    await site.create_user("ann@example.com")
    page = tab.page

    await page.goto(f"{site.url}/forgot-password")
    await shown(tab, "form")
    await tab.shot("forgot-password-form")
    await page.get_by_label("Email address").fill("ann@example.com")
    await page.get_by_role("button", name="Send reset link").click()
    await shown(tab, "sent")
    await assert_fits(tab)
    await tab.shot("forgot-password-sent")

    assert site.smtp is not None
    mails = await site.smtp.sink.wait_for(1, to="ann@example.com")
    link, token = mails[0].link()
    assert link.startswith(f"{site.url}/reset-password#token=")

    await page.goto(link)
    await shown(tab, "form")
    assert page.url == f"{site.url}/reset-password"  # the token left the address bar
    await assert_fits(tab)
    await tab.shot("reset-password-form")

    await page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    await page.get_by_label("New password, again").fill(NEW_PASSWORD)
    await page.get_by_role("button", name="Change password").click()
    await shown(tab, "done")
    await assert_fits(tab)
    await tab.shot("reset-password-done")

    continue_link = state(tab, "done").get_by_role("link")
    assert await continue_link.get_attribute("href") == APP_URL
    assert await login(site, "ann@example.com", NEW_PASSWORD) == 200
    assert await login(site, "ann@example.com", PASSWORD) == 401
    assert len(tab.recorder.posts("/auth/password-reset/confirm")) == 1
    assert_token_only_in_bodies(tab, token)


async def test_a_used_link_says_so_and_leads_to_a_new_one(site: Served, any_tab: Tab) -> None:
    tab = any_tab
    await site.create_user("ben@example.com")
    link, token = await site.reset_link("ben@example.com")
    used = await site.client.post(
        "/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD}
    )
    assert used.status_code == 200

    await tab.page.goto(link)
    await shown(tab, "invalid")
    await assert_fits(tab)
    await tab.shot("reset-password-invalid")
    await state(tab, "invalid").get_by_role("link", name="Get a new link").click()
    await tab.page.wait_for_url(f"{site.url}/forgot-password")
    await shown(tab, "form")


async def test_an_expired_link_says_so(site: Served, clock: FakeClock, tab: Tab) -> None:
    await site.create_user("cat@example.com")
    link, _ = await site.reset_link("cat@example.com")
    clock.advance(site.settings.reset_token_ttl + 1)

    await tab.page.goto(link)
    await shown(tab, "invalid")
    assert tab.page.url == f"{site.url}/reset-password"


async def test_a_weak_password_shows_the_servers_reasons_and_keeps_the_link(
    site: Served, any_tab: Tab
) -> None:
    tab = any_tab
    await site.create_user("dan@example.com")
    link, token = await site.reset_link("dan@example.com")
    page = tab.page
    await page.goto(link)
    await shown(tab, "form")

    await page.get_by_label("New password", exact=True).fill(COMMON_PASSWORD)
    await page.get_by_label("New password, again").fill(COMMON_PASSWORD)
    await page.get_by_role("button", name="Change password").click()

    alert = page.get_by_role("alert")
    await alert.wait_for(state="visible")
    assert "commonly used" in await alert.inner_text()
    assert await page.get_by_label("New password", exact=True).get_attribute("aria-invalid") == (
        "true"
    )
    await assert_fits(tab)
    await tab.shot("reset-password-weak")
    assert await token_state(site, token) == 200  # a refused password does not use the link
    assert_token_only_in_bodies(tab, token)


async def test_the_page_checks_length_and_match_before_asking_the_server(
    site: Served, tab: Tab
) -> None:
    await site.create_user("eve@example.com")
    link, _ = await site.reset_link("eve@example.com")
    page = tab.page
    await page.goto(link)
    await shown(tab, "form")
    password = page.get_by_label("New password", exact=True)
    again = page.get_by_label("New password, again")

    await password.fill("too short")
    assert await page.locator('[data-rule="length"]').get_attribute("data-met") == "no"
    await page.get_by_role("button", name="Change password").click()
    assert "at least 15 characters" in await page.get_by_role("alert").inner_text()

    await password.fill(NEW_PASSWORD)
    assert await page.locator('[data-rule="length"]').get_attribute("data-met") == "yes"
    await again.fill(NEW_PASSWORD + "!")
    assert await page.locator('[data-rule="match"]').get_attribute("data-met") == "no"
    await page.get_by_role("button", name="Change password").click()
    assert "do not match" in await page.get_by_role("alert").inner_text()
    assert await again.get_attribute("aria-invalid") == "true"
    assert await page.evaluate("document.activeElement.id") == "password-again"

    await page.get_by_role("button", name="Show passwords").click()
    assert await password.get_attribute("type") == "text"
    assert await again.get_attribute("type") == "text"
    assert tab.recorder.posts("/auth/password-reset/confirm") == []


async def test_a_network_error_keeps_the_form_and_the_link(site: Served, tab: Tab) -> None:
    await site.create_user("fay@example.com")
    link, token = await site.reset_link("fay@example.com")
    page = tab.page
    await page.goto(link)
    await shown(tab, "form")
    await page.route("**/auth/password-reset/confirm", lambda route: route.abort())

    await page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    await page.get_by_label("New password, again").fill(NEW_PASSWORD)
    await page.get_by_role("button", name="Change password").click()
    alert = page.get_by_role("alert")
    await alert.wait_for(state="visible")
    assert "could not reach the server" in await alert.inner_text()
    assert await token_state(site, token) == 200

    await page.unroute("**/auth/password-reset/confirm")
    await page.get_by_role("button", name="Change password").click()
    await shown(tab, "done")


async def test_reload_before_and_after_success(site: Served, tab: Tab) -> None:
    await site.create_user("gus@example.com")
    link, token = await site.reset_link("gus@example.com")
    page = tab.page
    await page.goto(link)
    await shown(tab, "form")

    await page.reload()  # the token is kept by this tab's history entry, not the URL
    await shown(tab, "form")
    assert page.url == f"{site.url}/reset-password"

    await page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    await page.get_by_label("New password, again").fill(NEW_PASSWORD)
    await page.get_by_role("button", name="Change password").click()
    await shown(tab, "done")
    verifies = len(tab.recorder.posts("/auth/password-reset/verify"))

    await page.reload()
    await shown(tab, "done")
    assert len(tab.recorder.posts("/auth/password-reset/verify")) == verifies  # token forgotten
    assert len(tab.recorder.posts("/auth/password-reset/confirm")) == 1
    assert_token_only_in_bodies(tab, token)


async def test_without_a_token_the_page_asks_for_the_code(site: Served, tab: Tab) -> None:
    await tab.page.goto(f"{site.url}/reset-password")
    await shown(tab, "code")
    await tab.shot("reset-password-code")
    await tab.page.goto(f"{site.url}/reset-password#token=not-a-token")
    await shown(tab, "invalid")
    assert tab.recorder.posts("/auth/password-reset/verify") == []


async def test_keyboard_alone_from_forgot_password_to_new_password(site: Served, tab: Tab) -> None:
    await site.create_user("hal@example.com")
    page = tab.page
    await page.goto(f"{site.url}/forgot-password")
    await shown(tab, "form")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.id") == "email"
    await page.keyboard.type("hal@example.com")
    await page.keyboard.press("Enter")
    await shown(tab, "sent")

    assert site.smtp is not None
    link, _ = (await site.smtp.sink.wait_for(1, to="hal@example.com"))[0].link()
    await page.goto(link)
    await shown(tab, "form")
    focused = "document.activeElement.id || document.activeElement.textContent"
    order = [await page.evaluate(focused)]
    for _ in range(3):
        await page.keyboard.press("Tab")
        order.append(await page.evaluate(focused))
    assert order == ["password", "password-again", "Show passwords", "Change password"]

    for _ in range(3):
        await page.keyboard.press("Shift+Tab")
    await page.keyboard.type(NEW_PASSWORD)
    await page.keyboard.press("Tab")
    await page.keyboard.type(NEW_PASSWORD)
    await page.keyboard.press("Enter")
    await shown(tab, "done")
    assert await login(site, "hal@example.com", NEW_PASSWORD) == 200


async def test_a_scanner_that_runs_scripts_uses_nothing(site: Served, browser: Any) -> None:
    """Mail scanners open links in real browsers too: opened many times, in fresh browsers, the
    link is only ever checked, and it still works for the person afterwards."""
    await site.create_user("ivy@example.com")
    link, token = await site.reset_link("ivy@example.com")
    for _ in range(3):
        async with checked_tab(browser) as scanner:
            await scanner.page.goto(link)
            await shown(scanner, "form")
            await scanner.page.reload()
            await shown(scanner, "form")
            assert scanner.recorder.posts("/auth/password-reset/confirm") == []

    async with checked_tab(browser) as person:
        await person.page.goto(link)
        await shown(person, "form")
        await person.page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
        await person.page.get_by_label("New password, again").fill(NEW_PASSWORD)
        await person.page.get_by_role("button", name="Change password").click()
        await shown(person, "done")
    assert await token_state(site, token) == 400


# -- forgot-password: one neutral answer --------------------------------------------------------


async def test_forgot_password_answers_the_same_for_any_address(site: Served, tab: Tab) -> None:
    await site.create_user("jon@example.com")
    page = tab.page
    texts = []
    for address in ("jon@example.com", "nobody@example.com"):
        await page.goto(f"{site.url}/forgot-password")
        await page.get_by_label("Email address").fill(address)
        await page.get_by_role("button", name="Send reset link").click()
        await shown(tab, "sent")
        texts.append(await page.locator("main").inner_text())
    assert texts[0] == texts[1]


async def test_forgot_password_rejects_a_non_address_in_the_page(site: Served, tab: Tab) -> None:
    page = tab.page
    await page.goto(f"{site.url}/forgot-password")
    await page.get_by_label("Email address").fill("not an address")
    await page.get_by_role("button", name="Send reset link").click()
    assert "like name@example.com" in await page.get_by_role("alert").inner_text()
    assert tab.recorder.posts("/auth/password-reset/request") == []


async def test_forgot_password_shows_the_wait_when_limited(
    tmp_path: Any, smtp: Smtp, clock: FakeClock, tab: Tab
) -> None:
    sock = bound_socket()
    settings = make_settings(
        tmp_path, smtp_url=smtp.url, public_url=socket_url(sock), rate_limit_reset_per_ip="1/minute"
    )
    async with serve(settings, clock, smtp, sock) as site:
        page = tab.page
        await page.goto(f"{site.url}/forgot-password")
        await page.get_by_label("Email address").fill("kim@example.com")
        await page.get_by_role("button", name="Send reset link").click()
        await shown(tab, "sent")

        await page.goto(f"{site.url}/forgot-password")
        await page.get_by_label("Email address").fill("kim@example.com")
        await page.get_by_role("button", name="Send reset link").click()
        alert = page.get_by_role("alert")
        await alert.wait_for(state="visible")
        assert "Too many requests" in await alert.inner_text()
        assert "seconds" in await alert.inner_text()
