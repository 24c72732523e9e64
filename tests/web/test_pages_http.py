"""The pages and their static assets over plain HTTP (no browser): headers, markup that a strict
CSP allows, static files and their limits, operator overrides, and — the point of tokens in the
URL fragment — that a mail scanner fetching the emailed link in every way spends nothing.
"""

from __future__ import annotations

import logging
import re
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path

import httpx
import jinja2
import pytest

from chaser_auth.app import create_app
from chaser_auth.domain.tokens import digest
from chaser_auth.web.pages import CONTENT_SECURITY_POLICY, render_pages
from tests.conftest import NEW_PASSWORD, FakeClock, Served, make_settings, serve
from tests.web.conftest import APP_URL

pytestmark = pytest.mark.asyncio(loop_scope="package")  # one Chromium: conftest.py

PAGE_PATHS = (
    "/forgot-password",
    "/reset-password",
    "/verify-email",
    "/change-email",
    "/undo-email-change",
)
ASSETS = {"/static/chaser-auth.js": "javascript", "/static/chaser-auth.css": "text/css"}
EXPECTED_HEADERS = {
    "content-type": "text/html; charset=utf-8",
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
}
ABSOLUTE_URL = re.compile(r"https?://[^\s\"'<>]+")
VERIFY = "/auth/password-reset/verify"
CONFIRM = "/auth/password-reset/confirm"


class Page(HTMLParser):
    """What a strict CSP cares about in one HTML document."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.scripts: list[dict[str, str | None]] = []
        self.inline_script = ""
        self.styled: list[str] = []
        self.stylesheets: list[str | None] = []
        self.urls: list[tuple[str | None, str]] = []  # (enclosing section's data-state, URL)
        self._sections: list[str | None] = []
        self._in_script = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append(tag)
        if "style" in found:
            self.styled.append(tag)
        if tag == "script":
            self.scripts.append(found)
            self._in_script = True
        if tag == "link" and found.get("rel") == "stylesheet":
            self.stylesheets.append(found.get("href"))
        if tag == "section":
            self._sections.append(found.get("data-state"))
        for name in ("href", "src", "action"):
            if value := found.get(name):
                self.urls.append((self._sections[-1] if self._sections else None, value))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False
        if tag == "section" and self._sections:
            self._sections.pop()

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.inline_script += data.strip()


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code


# -- 1. the pages -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGE_PATHS)
async def test_page_answers_html_with_the_security_headers(site: Served, path: str) -> None:
    response = await site.client.get(path)

    assert response.status_code == 200
    assert {k: response.headers.get(k) for k in EXPECTED_HEADERS} == EXPECTED_HEADERS
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp


@pytest.mark.parametrize("path", PAGE_PATHS)
async def test_head_on_a_page_has_the_same_headers_and_no_body(site: Served, path: str) -> None:
    get = await site.client.get(path)
    head = await site.client.head(path)

    assert head.status_code == 200
    assert head.content == b""
    assert {k: head.headers.get(k) for k in EXPECTED_HEADERS} == EXPECTED_HEADERS
    assert head.headers.get("content-length") == get.headers.get("content-length")


@pytest.mark.parametrize("path", PAGE_PATHS)
async def test_page_markup_needs_no_inline_script_style_or_foreign_origin(
    site: Served, path: str
) -> None:
    html = (await site.client.get(path)).text
    page = Page(html)

    assert page.scripts, "the page loads no script"
    for script in page.scripts:
        src = script.get("src") or ""
        assert src.startswith("static/"), f"script not relative under static/: {script}"
    assert page.inline_script == ""
    assert page.styled == []
    assert "style" not in page.tags
    assert page.stylesheets == ["static/chaser-auth.css"]
    assert set(ABSOLUTE_URL.findall(html)) <= {APP_URL}


@pytest.mark.parametrize("path", ["/reset-password", "/verify-email", "/change-email"])
async def test_success_section_links_to_the_configured_app_url(site: Served, path: str) -> None:
    page = Page((await site.client.get(path)).text)

    absolute = [(state, url) for state, url in page.urls if ABSOLUTE_URL.match(url)]
    assert absolute == [("done", APP_URL)]


# -- 2. static assets ---------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "kind"), ASSETS.items())
async def test_static_asset_is_served_with_its_type(site: Served, path: str, kind: str) -> None:
    get = await site.client.get(path)
    head = await site.client.head(path)

    assert get.status_code == 200
    assert kind in get.headers["content-type"]
    assert get.content
    assert head.status_code == 200
    assert kind in head.headers["content-type"]
    assert head.content == b""


async def test_unknown_static_file_is_a_404_in_the_error_shape(site: Served) -> None:
    assert_error(await site.client.get("/static/nope.js"), 404, "not_found")


@pytest.mark.parametrize(
    "target",
    [b"/static/../app.py", b"/static/../pages.py", b"/static/../../app.py"],
)
async def test_raw_dot_dot_path_never_serves_python_source(site: Served, target: bytes) -> None:
    # httpx would normalise `..` away; the `target` extension sends the path as written.
    response = await site.client.get("/", extensions={"target": target})

    assert_error(response, 404, "not_found")
    assert b"import" not in response.content


@pytest.mark.parametrize("path", ["/static/%2e%2e/app.py", "/static/%2e%2e/pages.py"])
async def test_encoded_dot_dot_path_never_serves_python_source(site: Served, path: str) -> None:
    response = await site.client.get(path)

    assert_error(response, 404, "not_found")
    assert b"import" not in response.content


# -- 3. outside the API -------------------------------------------------------------------------


async def test_pages_and_static_are_not_in_the_openapi_document(site: Served) -> None:
    paths = (await site.client.get("/openapi.json")).json()["paths"]

    for path in [*PAGE_PATHS, *ASSETS]:
        assert path not in paths
    assert not [p for p in paths if p.startswith("/static")]


async def test_post_to_a_page_is_a_405_in_the_error_shape(site: Served) -> None:
    response = await site.client.post("/reset-password", json={"token": "x"})

    assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}


# -- 4. link scanners ---------------------------------------------------------------------------


async def test_scanner_fetching_the_emailed_link_spends_nothing(site: Served) -> None:
    await site.create_user("scan@example.com")
    link, token = await site.reset_link("scan@example.com")
    bare = link.partition("#")[0]
    assert bare == f"{site.url}/reset-password"

    for _ in range(3):
        for url in (link, bare, f"{bare}?token={token}"):
            for method in ("GET", "HEAD"):
                response = await site.client.request(method, url, follow_redirects=True)
                assert response.status_code == 200
        for asset in ASSETS:
            assert (await site.client.get(asset)).status_code == 200

    async with site.runtime.store.tx() as tx:
        row = await tx.reset_tokens.by_digest(digest(site.runtime.secret, token))
    assert row is not None
    assert row.used_at is None
    assert row.revoked_at is None

    assert (await site.client.post(VERIFY, json={"token": token})).status_code == 200
    confirmed = await site.client.post(CONFIRM, json={"token": token, "password": NEW_PASSWORD})
    assert confirmed.status_code == 200
    again = await site.client.post(CONFIRM, json={"token": token, "password": NEW_PASSWORD})
    assert_error(again, 400, "invalid_token")


# -- 6. access log ------------------------------------------------------------------------------


async def test_access_log_never_contains_a_token_from_the_query_string(
    site: Served, caplog: pytest.LogCaptureFixture
) -> None:
    await site.create_user("log@example.com")
    _, token = await site.reset_link("log@example.com")
    caplog.set_level(logging.INFO, logger="chaser_auth.access")

    response = await site.client.get(f"/reset-password?token={token}", follow_redirects=True)

    assert response.status_code == 200
    logged = [r.getMessage() for r in caplog.records if r.name == "chaser_auth.access"]
    assert any("/reset-password" in message for message in logged), "no access record"
    assert not [message for message in logged if token in message]


# -- 5. operator overrides ----------------------------------------------------------------------

OVERRIDE_PAGE = """{% extends "_layout.html" %}
{% block title %}Operator reset{% endblock %}
{% block content %}<h1>Operator-branded reset page</h1>{% endblock %}
"""
OVERRIDE_CSS = "/* operator-branded stylesheet */ body { color: rebeccapurple; }\n"


def override_dir(root: Path, page: str = OVERRIDE_PAGE) -> Path:
    (root / "pages").mkdir(parents=True)
    (root / "static").mkdir()
    (root / "pages" / "reset_password.html").write_text(page)
    (root / "static" / "chaser-auth.css").write_text(OVERRIDE_CSS)
    return root


async def test_an_edited_override_is_what_the_next_app_renders(tmp_path: Path) -> None:
    """Templates are compiled once per process; an edited file is compiled again."""
    brand = override_dir(tmp_path / "brand")
    settings = make_settings(tmp_path, templates_dir=brand)
    assert b"Operator-branded reset page" in render_pages(settings)["en"]["/reset-password"]

    page = brand / "pages" / "reset_password.html"
    page.write_text(OVERRIDE_PAGE.replace("Operator-branded", "Re-branded"))
    rendered = render_pages(settings)["en"]["/reset-password"]
    assert b"Re-branded reset page" in rendered
    assert b"Operator-branded" not in rendered


async def test_operator_overrides_replace_only_the_files_they_provide(
    tmp_path: Path, clock: FakeClock
) -> None:
    settings = make_settings(tmp_path, templates_dir=override_dir(tmp_path / "brand"))

    async with serve(settings, clock, None) as served:
        reset = await served.client.get("/reset-password")
        forgot = await served.client.get("/forgot-password")
        css = await served.client.get("/static/chaser-auth.css")
        js = await served.client.get("/static/chaser-auth.js")

    assert reset.status_code == 200
    assert "Operator-branded reset page" in reset.text
    assert "Choose a new password" not in reset.text
    assert Page(reset.text).stylesheets == ["static/chaser-auth.css"]
    assert forgot.status_code == 200
    assert "Send reset link" in forgot.text
    assert "Operator-branded" not in forgot.text
    assert css.status_code == 200
    assert css.text == OVERRIDE_CSS
    packaged_js = files("chaser_auth.web") / "static" / "chaser-auth.js"
    assert js.status_code == 200
    assert js.content == packaged_js.read_bytes()


async def test_override_template_with_a_syntax_error_fails_at_construction(tmp_path: Path) -> None:
    broken = '{% extends "_layout.html" %}\n{% block content %}<h1>{{ oops </h1>{% endblock %}\n'
    settings = make_settings(tmp_path, templates_dir=override_dir(tmp_path / "brand", broken))

    with pytest.raises(jinja2.TemplateSyntaxError):
        create_app(settings)
