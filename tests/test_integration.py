"""What docs/integration.md tells an application team, run: its Python examples (read from the
page's fences, the base URL the one change) against a served app, its reverse-proxy recipe
with a proxy that does what its nginx block does, and the service decision it states (exact
pins)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import tomllib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chaser_auth.domain.admin import key_digest
from tests.conftest import (
    LINK,
    NEW_PASSWORD,
    PASSWORD,
    FakeClock,
    Smtp,
    bound_socket,
    make_settings,
    serve,
    socket_url,
)

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "integration.md"
KEY = "chak_integration-guide-key-0123456789abcdefghijklmnop"


def guide_block(containing: str) -> str:
    """The one Python fence of the guide that contains `containing`."""
    blocks = re.findall(r"```python\n(.*?)\n```", GUIDE.read_text(encoding="utf-8"), re.DOTALL)
    [block] = [b for b in blocks if containing in b]
    return block


def run_block(block: str, *, url_in_guide: str, url: str, **env: str) -> dict[str, Any]:
    """Execute a guide block with its base URL pointed at `url`; its namespace."""
    assert block.count(url_in_guide) == 1, url_in_guide
    namespace: dict[str, Any] = {}
    source = block.replace(url_in_guide, url)
    if env:
        source = source.replace("os.environ[", "ENV[")
        namespace["ENV"] = env
    exec(compile(source, str(GUIDE), "exec"), namespace)  # noqa: S102 - our own docs' example
    return namespace


async def test_the_guides_token_check_follows_sessions_and_their_end(
    tmp_path: Path, clock: FakeClock, smtp: Smtp
) -> None:
    async with serve(make_settings(tmp_path, smtp_url=smtp.url), clock, smtp) as app:
        guide = run_block(
            guide_block("async def current_account"),
            url_in_guide="http://127.0.0.1:8000",
            url=app.url,
        )
        current_account = guide["current_account"]
        try:
            user_id = await app.create_user("judy@example.com")
            login = await app.client.post(
                "/auth/login", json={"email": "judy@example.com", "password": PASSWORD}
            )
            header = f"Bearer {login.json()['token']}"
            assert await current_account(None) is None
            assert await current_account("Bearer not-a-session") is None
            account = await current_account(header)
            assert account["user_id"] == user_id and account["email"] == "judy@example.com"
            assert header.split()[1] not in str(guide["_cache"])  # digests, not tokens

            out = await app.client.post("/auth/logout", headers={"Authorization": header})
            assert out.status_code == 204
            # As the guide says: the cached answer outlives the session for CACHE_SECONDS …
            assert (await current_account(header))["user_id"] == user_id
            # … and once it is past, the end is seen.
            guide["CACHE_SECONDS"] = 0
            assert await current_account(header) is None
        finally:
            await guide["AUTH"].aclose()


async def test_the_guides_admin_calls_work_on_the_operator_listener(
    tmp_path: Path, clock: FakeClock, smtp: Smtp
) -> None:
    settings = make_settings(
        tmp_path, smtp_url=smtp.url, admin_keys=f"support-tool:{key_digest(KEY)}"
    )
    async with serve(settings, clock, smtp) as app:
        assert app.operator is not None
        guide = run_block(
            guide_block("async def invite"),
            url_in_guide="http://10.0.0.5:8001",
            url=str(app.operator.base_url).rstrip("/"),
            CHASER_AUTH_ADMIN_KEY=KEY,
        )
        try:
            created = await guide["invite"]("kim@example.com")
            assert created["has_password"] is False
            [mail] = await smtp.sink.wait_for(1, to="kim@example.com")
            assert LINK.search(mail.text())
            found = await guide["find"]("KIM@example.com")
            assert found is not None and found["id"] == created["id"]
            assert await guide["find"]("nobody@example.com") is None
            link = await guide["recovery_link"](created["id"])
            assert link.startswith(f"{app.settings.public_url}/reset-password#token=")
            await guide["lock_out"](created["id"])
            assert (await guide["find"]("kim@example.com"))["active"] is False
            with contextlib.suppress(httpx.HTTPStatusError):
                await guide["recovery_link"](created["id"])
                raise AssertionError("a disabled account got a recovery link")
        finally:
            await guide["ADMIN"].aclose()
        trail = await app.runtime.housekeeping.audit_trail(event="admin_call", limit=100)
        assert {(e.detail or {})["admin_key"] for e in trail} == {"support-tool"}


# -- the reverse-proxy recipe -------------------------------------------------------------------

PREFIX = "/account"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host"}


def prefix_proxy(upstream: str) -> Starlette:
    """What the guide's nginx block does: `location /account/` forwarded to the upstream with
    the prefix removed, the client appended to X-Forwarded-For; everything else is the
    application's (here, a 404 that is not chaser-auth's)."""
    client = httpx.AsyncClient(base_url=upstream, timeout=30)

    async def forward(request: Request) -> Response:
        path = request.url.path
        if not path.startswith(f"{PREFIX}/"):
            return Response("the application's own page", status_code=404)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        peer = request.client.host if request.client else "unknown"
        forwarded = request.headers.get("x-forwarded-for")
        headers["x-forwarded-for"] = f"{forwarded}, {peer}" if forwarded else peer
        answer = await client.request(
            request.method,
            path.removeprefix(PREFIX),
            params=request.url.query,
            headers=headers,
            content=await request.body(),
        )
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        kept.pop("content-length", None)
        kept.pop("content-encoding", None)
        return Response(answer.content, status_code=answer.status_code, headers=kept)

    methods = ["GET", "HEAD", "POST", "DELETE"]
    app = Starlette(routes=[Route("/{path:path}", forward, methods=methods)])
    app.state.client = client
    return app


@contextlib.asynccontextmanager
async def proxying(upstream: str, sock: socket.socket) -> AsyncIterator[None]:
    app = prefix_proxy(upstream)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield
    finally:
        server.should_exit = True
        await task
        await app.state.client.aclose()


async def test_the_reverse_proxy_recipe_serves_it_under_a_path_of_the_apps_domain(
    tmp_path: Path, clock: FakeClock, smtp: Smtp
) -> None:
    proxy_sock = bound_socket()
    site = socket_url(proxy_sock)  # "https://app.example.com" of the guide
    settings = make_settings(
        tmp_path,
        smtp_url=smtp.url,
        public_url=f"{site}{PREFIX}",
        trusted_proxies="127.0.0.1",
    )
    async with serve(settings, clock, smtp) as app, proxying(app.url, proxy_sock):
        await app.create_user("leo@example.com")
        # A person's browser, on another address than the proxy's.
        browser = httpx.AsyncClient(
            base_url=site, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.3")
        )
        async with browser:
            assert (await browser.get("/elsewhere")).text == "the application's own page"
            page = await browser.get(f"{PREFIX}/forgot-password")
            assert page.status_code == 200
            # Every reference of the page resolves under the prefix.
            references = re.findall(r'(?:href|src)="([^"#]+)"', page.text)
            assert references and not [r for r in references if r.startswith("/")]
            for reference in references:
                if not reference.startswith(("http:", "https:", "mailto:")):
                    fetched = await browser.get(f"{PREFIX}/{reference}")
                    assert fetched.status_code == 200, reference
            script = (await browser.get(f"{PREFIX}/static/chaser-auth.js")).text
            posts = re.findall(r'post\("([^"]+)"', script)
            assert posts and all(not p.startswith("/") for p in posts)

            # The flow, as the page's script makes it: relative to the page.
            asked = await browser.post(
                f"{PREFIX}/auth/password-reset/request", json={"email": "leo@example.com"}
            )
            assert asked.status_code == 200
            [mail] = await smtp.sink.wait_for(1, to="leo@example.com")
            link, token = mail.link()
            assert link.startswith(f"{site}{PREFIX}/reset-password#token=")
            opened = await browser.get(link.partition("#")[0].removeprefix(site))
            assert opened.status_code == 200
            confirmed = await browser.post(
                f"{PREFIX}/auth/password-reset/confirm",
                json={"token": token, "password": NEW_PASSWORD},
            )
            assert confirmed.status_code == 200, confirmed.text
            login = await browser.post(
                f"{PREFIX}/auth/login", json={"email": "leo@example.com", "password": NEW_PASSWORD}
            )
            assert login.status_code == 200
            me = await browser.get(
                f"{PREFIX}/auth/me", headers={"Authorization": f"Bearer {login.json()['token']}"}
            )
            assert me.json()["email"] == "leo@example.com"
            # The metrics and the admin API are not behind the proxy.
            assert (await browser.get(f"{PREFIX}/metrics")).status_code == 404
            assert (await browser.get(f"{PREFIX}/admin/accounts")).status_code == 404
        # The limits and the audit trail saw the browser's address, not the proxy's.
        [requested] = await app.runtime.housekeeping.audit_trail(event="reset_requested")
        assert requested.client == "127.0.0.3"
        [logged_in] = await app.runtime.housekeeping.audit_trail(event="login_succeeded")
        assert logged_in.client == "127.0.0.3" and logged_in.user_id is not None
        assert isinstance(logged_in.user_id, uuid.UUID)


# -- the service decision -----------------------------------------------------------------------


def test_the_runtime_dependencies_are_pinned_exactly_as_a_services_are() -> None:
    """docs/integration.md: chaser-auth is a service, not a library; its pins say so."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    loose = [d for d in project["dependencies"] if not re.fullmatch(r"[\w.\[\]-]+==[\w.]+", d)]
    assert not loose, f"not pinned exactly: {loose}"
    text = GUIDE.read_text(encoding="utf-8")
    assert "chaser-auth is a **service**" in text
    assert "mounting `create_app(Settings())`" in text
