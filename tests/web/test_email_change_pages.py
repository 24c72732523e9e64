"""The change-email and undo-email-change pages in a real Chromium: the mailed link opens the
page, which does nothing until its button is pressed; then the address moves (docs/branding.md,
"The pages")."""

from __future__ import annotations

import re

import pytest

from tests.conftest import PASSWORD, Served
from tests.web.conftest import Tab, shown

pytestmark = pytest.mark.asyncio(loop_scope="package")  # one Chromium: conftest.py

OLD = "gina@example.com"
NEW = "gina@example.org"
CHANGE_LINK = re.compile(r"(http://[^\s\"<>]+/change-email#token=[A-Za-z0-9_-]{43,})")
UNDO_LINK = re.compile(r"(http://[^\s\"<>]+/undo-email-change#token=[A-Za-z0-9_-]{43,})")


async def logs_in(site: Served, email: str) -> bool:
    response = await site.client.post("/auth/login", json={"email": email, "password": PASSWORD})
    return response.status_code == 200


async def test_one_press_moves_the_account_and_one_press_moves_it_back(
    site: Served, tab: Tab
) -> None:
    assert site.smtp is not None
    await site.create_user(OLD)
    login = await site.client.post("/auth/login", json={"email": OLD, "password": PASSWORD})
    token = login.json()["token"]
    asked = await site.client.post(
        "/auth/email/change",
        json={"current_password": PASSWORD, "email": NEW},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert asked.status_code == 202
    [mail] = await site.smtp.sink.wait_for(1, to=NEW)
    found = CHANGE_LINK.search(mail.text())
    assert found

    await tab.page.goto(found.group(1))
    await shown(tab, "ready")
    assert await logs_in(site, OLD)  # opening the page changed nothing
    await tab.page.get_by_role("button", name="Use this address").click()
    await shown(tab, "done")
    assert await logs_in(site, NEW) and not await logs_in(site, OLD)

    [notice] = await site.smtp.sink.wait_for(1, to=OLD)
    undo = UNDO_LINK.search(notice.text())
    assert undo
    await tab.page.goto(undo.group(1))
    await shown(tab, "ready")
    await tab.page.get_by_role("button", name="Move it back").click()
    await shown(tab, "done")
    assert await logs_in(site, OLD) and not await logs_in(site, NEW)
