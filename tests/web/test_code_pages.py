"""The one-time code on the pages, in a real Chromium: `/reset-password` and `/verify-email`
opened fresh — no link, no fragment, as on another device — take the code from the email and
work exactly as the link does (docs/branding.md, "The pages")."""

from __future__ import annotations

import re

import pytest

from tests.conftest import NEW_PASSWORD, PASSWORD, Received, Served
from tests.web.conftest import Tab, shown, state
from tests.web.test_reset_pages import assert_fits

pytestmark = pytest.mark.asyncio(loop_scope="package")  # one Chromium: conftest.py

CODE = re.compile(r"enter this code with your email address:\s+(\d{4} \d{4})\s")


def code_in(received: Received) -> str:
    found = CODE.search(received.text())
    assert found, "no code in the email"
    return found.group(1)


async def login(site: Served, email: str, password: str) -> int:
    response = await site.client.post("/auth/login", json={"email": email, "password": password})
    return response.status_code


async def test_the_code_on_a_fresh_reset_page_resets_the_password(
    site: Served, any_tab: Tab
) -> None:
    tab, page = any_tab, any_tab.page
    await site.create_user("ivy@example.com")
    _, token = await site.reset_link("ivy@example.com")
    assert site.smtp is not None
    code = code_in(site.smtp.sink.to("ivy@example.com")[-1])

    await page.goto(f"{site.url}/reset-password")  # typed by hand: no fragment
    await shown(tab, "code")
    await page.get_by_label("Email address").fill("ivy@example.com")
    # A typo first: the page says so and keeps the form.
    wrong = f"{(int(code.replace(' ', '')) + 1) % 10**8:08d}"
    await page.get_by_label("Code from the email").fill(wrong)
    await page.get_by_role("button", name="Continue").click()
    await state(tab, "code").get_by_role("alert").filter(has_text="wrong").wait_for()
    assert await page.get_by_label("Code from the email").get_attribute("aria-invalid") == "true"
    await assert_fits(tab)
    await tab.shot("reset-password-code-wrong")

    await page.get_by_label("Code from the email").fill(code)  # as mailed: "1234 5678"
    await page.get_by_role("button", name="Continue").click()
    await shown(tab, "form")
    assert page.url == f"{site.url}/reset-password"
    await page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    await page.get_by_label("New password, again").fill(NEW_PASSWORD)
    await page.get_by_role("button", name="Change password").click()
    await shown(tab, "done")
    await tab.shot("reset-password-code-done")

    assert await login(site, "ivy@example.com", NEW_PASSWORD) == 200
    assert await login(site, "ivy@example.com", PASSWORD) == 401
    wrong_try, exchanged = tab.recorder.posts("/auth/password-reset/code")
    assert code.replace(" ", "") in exchanged["body"]
    assert wrong in wrong_try["body"]
    [confirm] = tab.recorder.posts("/auth/password-reset/confirm")
    assert token in confirm["body"]  # the code stood for the link's token
    for request in tab.recorder.requests:
        assert token not in request["url"]
        assert code.replace(" ", "") not in request["url"]


async def test_the_code_on_a_fresh_verify_page_verifies_the_address(
    site: Served, any_tab: Tab
) -> None:
    tab, page = any_tab, any_tab.page
    response = await site.client.post(
        "/auth/register", json={"email": "joy@example.com", "password": PASSWORD}
    )
    assert response.status_code == 202
    assert site.smtp is not None
    [received] = await site.smtp.sink.wait_for(1, to="joy@example.com")
    code = code_in(received)
    assert await login(site, "joy@example.com", PASSWORD) == 401

    await page.goto(f"{site.url}/verify-email")
    await shown(tab, "code")
    await tab.shot("verify-email-code")
    await page.get_by_label("Email address").fill("joy@example.com")
    await page.get_by_label("Code from the email").fill(code)
    await page.get_by_role("button", name="Verify my email address").click()
    await shown(tab, "done")
    await tab.shot("verify-email-code-done")
    assert await login(site, "joy@example.com", PASSWORD) == 200

    await page.reload()
    await shown(tab, "done")
    assert len(tab.recorder.posts("/auth/verify-email/code")) == 1
