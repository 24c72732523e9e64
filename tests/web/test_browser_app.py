"""The example single-page app of docs/browser-apps.md (docs/examples/spa.html, served as it is
but for the API's URL) in a real Chromium, from a second origin on another loopback port:

- in the allowlist (`CHASER_AUTH_CORS_ORIGINS`), it signs up, verifies, signs in with the
  session cookie and lists the sessions;
- a page on an origin off the list (another site: `localhost` rather than `127.0.0.1`) can read
  no answer, with or without credentials;
- a form on another origin of the same site — where `SameSite=Lax` lets the cookie through —
  posting to the API with the cookie is refused 403 `csrf_refused`, and nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from tests.conftest import (
    PASSWORD,
    FakeClock,
    Served,
    Smtp,
    bound_socket,
    make_settings,
    serve,
    socket_url,
)
from tests.web.conftest import checked_tab

pytestmark = pytest.mark.asyncio(loop_scope="package")  # one Chromium: conftest.py

ROOT = Path(__file__).resolve().parents[2]
SPA = ROOT / "docs" / "examples" / "spa.html"
EXAMPLE_API = 'const API = "http://localhost:8000";'
VERIFY_TOKEN = re.compile(r"verify-email#token=([A-Za-z0-9_-]{43,})")
EMAIL = "spa@example.com"


@contextlib.asynccontextmanager
async def pages(sock: socket.socket, routes: dict[str, str]) -> AsyncIterator[str]:
    """A plain web server on `sock` answering each path with its HTML; its URL."""

    def page(html: str) -> Any:
        async def answer(_: Request) -> HTMLResponse:
            return HTMLResponse(html)

        return answer

    app = Starlette(routes=[Route(path, page(html)) for path, html in routes.items()])
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield socket_url(sock)
    finally:
        server.should_exit = True
        await task


@pytest_asyncio.fixture(loop_scope="package")
async def setup(tmp_path: Path, smtp: Smtp, clock: FakeClock) -> AsyncIterator[dict[str, Any]]:
    """The API on one port, the SPA (allowed) on a second, a page of another site on a third
    (http://localhost:…) and one of another origin of the same site on a fourth."""
    api_sock, spa_sock, other_sock, sibling_sock = (bound_socket() for _ in range(4))
    spa_origin = socket_url(spa_sock)
    settings = make_settings(
        tmp_path, smtp_url=smtp.url, public_url=socket_url(api_sock), cors_origins=spa_origin
    )
    async with serve(settings, clock, smtp, api_sock) as api:
        spa = SPA.read_text(encoding="utf-8")
        assert EXAMPLE_API in spa, "the example no longer names its API as the test expects"
        spa = spa.replace(EXAMPLE_API, f"const API = {json.dumps(api.url)};")
        form = (
            f'<form id="forged" method="post" action="{api.url}/auth/logout">'
            '<button id="go">Win a prize</button></form>'
        )
        async with (
            pages(spa_sock, {"/": spa}) as spa_url,
            pages(other_sock, {"/": "<p>another site</p>"}) as other_url,
            pages(sibling_sock, {"/": form}) as sibling_url,
        ):
            yield {
                "api": api,
                "spa": spa_url,
                "other": other_url.replace("127.0.0.1", "localhost"),
                "sibling": sibling_url,
            }


async def sessions_of(api: Served, cookie: str) -> int:
    response = await api.client.get("/auth/sessions", headers={"Cookie": cookie})
    if response.status_code != 200:
        return -1
    return len(response.json()["sessions"])


async def test_the_example_app_signs_in_with_the_cookie(
    setup: dict[str, Any], browser: Any
) -> None:
    api: Served = setup["api"]
    assert api.smtp is not None
    async with checked_tab(browser) as tab:
        page = tab.page
        await page.goto(setup["spa"])
        await page.wait_for_function("document.getElementById('status').textContent.length > 0")
        signup = page.locator("#signup")
        await signup.locator("[name=email]").fill(EMAIL)
        await signup.locator("[name=password]").fill(PASSWORD)
        await signup.get_by_role("button").click()
        await page.get_by_text("Thank you").wait_for()

        [mail] = await api.smtp.sink.wait_for(1, to=EMAIL)
        found = VERIFY_TOKEN.search(mail.text())
        assert found
        await page.goto(f"{setup['spa']}/?from=mail#token={found.group(1)}")
        await page.get_by_text(f"Signed in as {EMAIL}.").wait_for()

        await page.get_by_role("button", name="Sign out").click()
        await page.get_by_text("Not signed in.").wait_for()

        login = page.locator("#login")
        await login.locator("[name=email]").fill(EMAIL)
        await login.locator("[name=password]").fill(PASSWORD)
        await login.get_by_role("button").click()
        await page.get_by_text(f"Signed in as {EMAIL}.").wait_for()
        items = page.locator("#sessions li")
        await items.first.wait_for()
        assert await items.count() == 1  # the verification's session ended at sign-out
        text = await items.first.text_content()
        assert text is not None and "Chrome" in text and "127.0.0.0/24" in text
        assert "(this one)" in text

        # No script can read the session: the body's token was empty, the cookie is HttpOnly.
        assert await page.evaluate("document.cookie") == ""
        cookies = await page.context.cookies(api.url)
        [cookie] = [c for c in cookies if c["name"] == "chaser-session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        for request in tab.recorder.posts("/auth/login"):
            assert request["headers"]["chaser-session"] == "cookie"


async def test_another_origin_reads_nothing_and_a_forged_form_changes_nothing(
    setup: dict[str, Any], browser: Any
) -> None:
    api: Served = setup["api"]
    await api.create_user(EMAIL)
    async with checked_tab(browser) as tab:
        page = tab.page
        await page.goto(setup["spa"])
        login = page.locator("#login")
        await login.locator("[name=email]").fill(EMAIL)
        await login.locator("[name=password]").fill(PASSWORD)
        await login.get_by_role("button").click()
        await page.get_by_text(f"Signed in as {EMAIL}.").wait_for()
        [cookie] = [c for c in await page.context.cookies(api.url) if c["name"] == "chaser-session"]
        header = f"chaser-session={cookie['value']}"
        assert await sessions_of(api, header) == 1

        # A page of another site, in the same browser: every read fails.
        other = await page.context.new_page()
        await other.goto(setup["other"])
        outcome = await other.evaluate(
            """async (api) => {
                const tries = [
                  fetch(api + "/auth/me", {credentials: "include"}),
                  fetch(api + "/auth/sessions", {credentials: "include"}),
                  fetch(api + "/auth/me"),
                  fetch(api + "/auth/login", {method: "POST", credentials: "include",
                    headers: {"Content-Type": "application/json", "Chaser-Session": "cookie"},
                    body: JSON.stringify({email: "x@example.com", password: "y"})}),
                ];
                const results = [];
                for (const attempt of tries) {
                  try { await (await attempt).text(); results.push("read"); }
                  catch (error) { results.push(error.name); }
                }
                return results;
            }""",
            api.url,
        )
        assert outcome == ["TypeError"] * 4
        await other.close()

        # A form on another origin of the same site: the browser sends the cookie with it.
        sibling = await page.context.new_page()
        await sibling.goto(setup["sibling"])
        async with sibling.expect_response(f"{api.url}/auth/logout") as answered:
            await sibling.click("#go")
        response = await answered.value
        assert response.status == 403
        assert "cookie" in (await response.request.all_headers())
        assert json.loads(await response.text())["error"]["code"] == "csrf_refused"
        await sibling.close()

        assert await sessions_of(api, header) == 1  # still signed in: nothing changed
        await page.reload()
        await page.get_by_text(f"Signed in as {EMAIL}.").wait_for()
    # The refused reads were logged by Chromium as console errors on the other page only,
    # which is not the checked tab's page.


async def test_the_example_is_the_one_the_docs_show() -> None:
    page = (ROOT / "docs" / "browser-apps.md").read_text(encoding="utf-8")
    assert '--8<-- "docs/examples/spa.html"' in page
