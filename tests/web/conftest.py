"""The pages under test: the app served on a socket whose URL is also its `PUBLIC_URL` (so the
emailed link is followed as it is), and a real Chromium — Debian's `chromium` package, driven by
Playwright for Python — that records everything the page does.

Screenshots go to `test-artifacts/screenshots/` (or `$CHASER_AUTH_ARTIFACTS/screenshots/`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.conftest import (
    FakeClock,
    Served,
    Smtp,
    bound_socket,
    make_settings,
    require,
    serve,
    socket_url,
)

APP_URL = "https://app.example.test/welcome"
ARTIFACTS = Path(os.environ.get("CHASER_AUTH_ARTIFACTS", "test-artifacts")) / "screenshots"
CHROMIUM_FLAGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--metrics-recording-only",
]


@pytest_asyncio.fixture(loop_scope="package")
async def site(tmp_path: Path, smtp: Smtp, clock: FakeClock) -> AsyncIterator[Served]:
    sock = bound_socket()
    settings = make_settings(
        tmp_path, smtp_url=smtp.url, public_url=socket_url(sock), app_url=APP_URL
    )
    async with serve(settings, clock, smtp, sock) as served:
        yield served


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def browser() -> AsyncIterator[Any]:
    """One Chromium for the package's tests (a launch costs about a second of CPU): each
    module of the package runs its tests in the package's event loop (`pytestmark`), and each
    test opens a browser context of its own (`open_tab`)."""
    executable = shutil.which("chromium")
    require(executable, "browser tests need Debian's chromium (apt-get install -y chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:  # pragma: no cover - the test extra installs it
        require(False, "browser tests need playwright (pip install -e .[test])")
        raise
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            await launched.close()


_RESOURCE_NOTE = "Failed to load resource:"


@dataclass
class Recorder:
    """What a page did: every request it made (URL, headers, body) and every console error."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        page.on("request", self._on_request)
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    async def _on_request(self, request: Any) -> None:
        self.requests.append(
            {
                "method": request.method,
                "url": request.url,
                "headers": await request.all_headers(),
                "body": request.post_data or "",
            }
        )

    def _on_console(self, message: Any) -> None:
        # Chromium itself logs every 4xx answer and aborted request ("Failed to load resource:
        # …"); those are expected outcomes the tests check through the page. Anything else —
        # a script error, a CSP violation — counts.
        if message.type == "error" and not message.text.startswith(_RESOURCE_NOTE):
            self.errors.append(f"console: {message.text}")

    def posts(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST" and r["url"].endswith(path)]


@dataclass
class Tab:
    page: Any
    recorder: Recorder
    size: str  # "desktop" or "320"

    async def shot(self, name: str) -> None:
        """Save `<name>-<size>.png`: the whole page as the person sees it now."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}-{self.size}.png"
        await self.page.screenshot(path=str(path), full_page=True)


async def open_tab(browser: Any, *, width: int = 1280, height: int = 800) -> Tab:
    context = await browser.new_context(viewport={"width": width, "height": height})
    page = await context.new_page()
    recorder = Recorder()
    recorder.attach(page)
    return Tab(page, recorder, "320" if width <= 320 else "desktop")


@contextlib.asynccontextmanager
async def checked_tab(browser: Any, width: int = 1280, height: int = 800) -> AsyncIterator[Tab]:
    """A fresh browser context; on leaving, the page must have logged no error."""
    opened = await open_tab(browser, width=width, height=height)
    try:
        yield opened
        assert opened.recorder.errors == [], "the page logged errors"
    finally:
        await opened.page.context.close()


def state(tab: Tab, name: str) -> Any:
    """One of the page's `data-state` sections (the script shows exactly one)."""
    return tab.page.locator(f'[data-state="{name}"]')


async def shown(tab: Tab, name: str) -> None:
    await state(tab, name).wait_for(state="visible", timeout=10_000)


@pytest_asyncio.fixture(loop_scope="package")
async def tab(browser: Any) -> AsyncIterator[Tab]:
    async with checked_tab(browser) as opened:
        yield opened


@pytest_asyncio.fixture(
    loop_scope="package", params=[(1280, 800), (320, 640)], ids=["desktop", "320"]
)
async def any_tab(request: pytest.FixtureRequest, browser: Any) -> AsyncIterator[Tab]:
    """The same test on a desktop screen and on a 320 px wide phone."""
    async with checked_tab(browser, *request.param) as opened:
        yield opened
