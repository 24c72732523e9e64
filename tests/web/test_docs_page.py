"""`/docs` in a real Chromium: Swagger UI renders the served OpenAPI document under the page's
Content-Security-Policy, and every request the page makes stays on this origin (no CDN)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Served
from tests.web.conftest import Tab

pytestmark = pytest.mark.asyncio(loop_scope="package")  # one Chromium: conftest.py


async def test_docs_render_every_operation_from_this_origin_alone(site: Served, tab: Tab) -> None:
    await tab.page.goto(f"{site.url}/docs")
    operations = tab.page.locator(".opblock")
    await tab.page.locator(
        ".opblock-summary-path", has_text="/auth/password-reset/request"
    ).wait_for(timeout=15_000)
    document: dict[str, Any] = (await site.client.get("/openapi.json")).json()
    expected = sum(
        method in ("get", "post", "put", "delete", "patch")
        for item in document["paths"].values()
        for method in item
    )
    assert await operations.count() == expected
    await tab.shot("docs")
    requested = [r["url"] for r in tab.recorder.requests]
    assert f"{site.url}/openapi.json" in requested
    outside = [url for url in requested if not url.startswith(f"{site.url}/")]
    assert outside == [], outside
    # `tab` asserts on leaving that the page logged no error: a CSP violation is one.
