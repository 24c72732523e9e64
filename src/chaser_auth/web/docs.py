"""The API docs page, `/docs`: Swagger UI from the files of an installed package
(`swagger-ui-bundle-v2`, the upstream `swagger-ui-dist` build), served under `/docs/static/` —
never a script from a CDN. A script from another host would run with this origin's rights on
the origin that sets passwords and sessions, and a floating CDN version changes under us.

The page's one inline script (FastAPI's Swagger UI set-up) is allowed by its SHA-256 in the
page's Content-Security-Policy (CSP Level 2 hash sources), so the page needs no
`'unsafe-inline'`; everything else comes from this origin only.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, Response
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from chaser_auth.web.pages import PAGE_HEADERS

DOCS_PATH = "/docs"
STATIC_PATH = "/docs/static"
# What the page loads; nothing else of the package (its demo page, source maps) is served.
ASSETS = {
    "js": "swagger-ui-bundle.js",
    "css": "swagger-ui.css",
    "favicon": "favicon-32x32.png",
}
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def render(title: str, openapi_url: str) -> tuple[bytes, str]:
    """The page, and the hash source of its inline script (`'sha256-…'`)."""
    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=title,
        swagger_js_url=f"{STATIC_PATH}/{ASSETS['js']}",
        swagger_css_url=f"{STATIC_PATH}/{ASSETS['css']}",
        swagger_favicon_url=f"{STATIC_PATH}/{ASSETS['favicon']}",
        oauth2_redirect_url=None,  # the API has bearer sessions, no OAuth2 flow to redirect
    )
    html = bytes(page.body)
    [script] = _INLINE_SCRIPT.findall(html.decode())
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return html, f"'sha256-{digest}'"


def router(title: str, openapi_url: str, public_url: str) -> APIRouter:
    html, script_hash = render(title, openapi_url)
    public = urlsplit(public_url)
    # "Try it out" sends requests to the document's server, PUBLIC_URL, which may be another
    # origin than the one the page was opened on (a proxy in front, another host name).
    policy = (
        f"default-src 'none'; script-src 'self' {script_hash}; style-src 'self'; "
        f"img-src 'self' data:; connect-src 'self' {public.scheme}://{public.netloc}; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
    headers = PAGE_HEADERS | {"Content-Security-Policy": policy}
    docs = APIRouter(include_in_schema=False)

    async def page() -> Response:
        return Response(html, media_type="text/html; charset=utf-8", headers=headers)

    docs.add_api_route(DOCS_PATH, page, methods=["GET", "HEAD"], name="docs")
    return docs


class _Only(StaticFiles):
    """StaticFiles that serves the named files of its directory and nothing else."""

    def __init__(self, directory: Path, names: set[str]) -> None:
        super().__init__(directory=directory, follow_symlink=False)
        self.names = names

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        if path not in self.names:
            return "", None
        return super().lookup_path(path)


def static_files() -> StaticFiles:
    return _Only(Path(str(swagger_ui_path)), set(ASSETS.values()))
