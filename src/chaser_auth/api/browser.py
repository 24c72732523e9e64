"""What browser apps need (docs/browser-apps.md): CORS for the allowlisted origins, the session
as a cookie, and the CSRF check on every state-changing request that the cookie authenticates.

- CORS: Starlette's middleware, on the API's paths only (the pages stay same-origin), with
  credentials for the listed origins only; a preflight from any other origin is a 403 in the
  one error shape, and an answer to one carries no `Access-Control-*` header at all.
- The cookie: asked for with the `Chaser-Session` request header (`cookie`: the cookie and an
  empty `token` in the body; `both`: the cookie and the token), so a bearer client that sends
  nothing new gets exactly the `AuthResponse` it always got.
- CSRF: a state-changing request authenticated by the cookie (anything but GET, HEAD,
  OPTIONS) must carry `Chaser-Session` (a custom header: a form cannot send it, and another
  origin's script cannot without a preflight that only the allowlist passes) and an `Origin`
  (or, without one, a `Referer`) that is the public URL's origin or an allowlisted one.
"""

from __future__ import annotations

import functools
import ipaddress
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import urlsplit

from fastapi import Request, Response
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chaser_auth.api.middleware import error_response_parts
from chaser_auth.config import Settings, origin
from chaser_auth.errors import CsrfRefused, OriginNotAllowed

SESSION_HEADER = "Chaser-Session"
COOKIE_MODES = ("cookie", "both")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECURE_COOKIE = "__Host-chaser-session"
LOCAL_COOKIE = "chaser-session"

# Paths that CORS answers: the JSON API. The pages, their files and /docs stay same-origin.
_API_PREFIXES = ("/auth/",)
_API_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"})
ALLOWED_HEADERS = ["Authorization", "Content-Type", SESSION_HEADER, "X-Request-ID"]
EXPOSED_HEADERS = [
    "X-Request-ID",
    "Retry-After",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-RateLimit-Scope",
]


def is_api_path(path: str) -> bool:
    return path.startswith(_API_PREFIXES) or path in _API_PATHS


class Cors(CORSMiddleware):
    """CORSMiddleware on the API's paths, saying nothing to origins off the list."""

    def __init__(self, app: ASGIApp, origins: tuple[str, ...]) -> None:
        super().__init__(
            app,
            allow_origins=list(origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=ALLOWED_HEADERS,
            allow_credentials=True,
            expose_headers=EXPOSED_HEADERS,
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_api_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        sent = headers.get("origin")
        if sent is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            response = self.preflight_response(request_headers=headers)
            if response.status_code != 200:
                status, parts, body = error_response_parts(OriginNotAllowed())
                await send({"type": "http.response.start", "status": status, "headers": parts})
                await send({"type": "http.response.body", "body": body})
                return
            await response(scope, receive, send)
            return
        await self.app(scope, receive, functools.partial(self._answer, send=send, origin=sent))

    async def _answer(self, message: Message, send: Send, origin: str) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            if self.is_allowed_origin(origin=origin):
                headers.update(self.simple_headers)
                headers["Access-Control-Allow-Origin"] = origin
            headers["Vary"] = ", ".join([*headers.getlist("Vary"), "Origin"])
        await send(message)


# -- the cookie -----------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_http(settings: Settings) -> bool:
    """The public URL is plain http on this machine (localhost, 127.0.0.0/8, ::1): the only
    case where the cookie goes without `Secure`, and so without the `__Host-` prefix, which a
    browser accepts only on a Secure cookie (RFC 6265bis §4.1.3.2). Chromium and Firefox would
    take a Secure cookie from http://localhost, but Safari and command-line cookie jars do not.
    Any other public URL gets `Secure`: over plain http to another host the cookie is never
    set, on purpose."""
    parts = urlsplit(settings.public_url)
    return parts.scheme == "http" and _is_loopback(parts.hostname or "")


def cookie_name(settings: Settings) -> str:
    return LOCAL_COOKIE if local_http(settings) else SECURE_COOKIE


def wanted_mode(request: Request) -> str | None:
    """`cookie` or `both` when the client asks for the session as a cookie, else None."""
    value = request.headers.get(SESSION_HEADER, "").strip().lower()
    return value if value in COOKIE_MODES else None


def _cookie(settings: Settings, value: str, expires: datetime | None) -> str:
    parts = [f"{cookie_name(settings)}={value}", "Path=/"]
    if expires is None:
        parts += ["Max-Age=0", "Expires=Thu, 01 Jan 1970 00:00:00 GMT"]
    else:
        # The session was opened just now: it lives `session_max_ttl` at most (Max-Age, which
        # outranks Expires and does not depend on the browser's clock).
        parts += [
            f"Max-Age={settings.session_max_ttl}",
            f"Expires={format_datetime(expires, usegmt=True)}",
        ]
    if not local_http(settings):
        parts.append("Secure")
    parts += ["HttpOnly", "SameSite=Lax"]
    return "; ".join(parts)


def give_session(
    request: Request, response: Response, settings: Settings, token: str, expires: datetime
) -> str:
    """Set the session cookie when the client asked for it; the token the body should carry
    (empty when the client asked for the cookie only)."""
    mode = wanted_mode(request)
    if mode is None:
        return token
    response.headers.append("Set-Cookie", _cookie(settings, token, expires.astimezone(UTC)))
    return token if mode == "both" else ""


def precheck(request: Request, settings: Settings) -> None:
    """Before a route that opens a session does anything: a client asking for the cookie must
    come from an allowed origin (no cross-site login into the attacker's account — login CSRF),
    so nothing is spent (a link's token, a login attempt) on a request that would be refused."""
    if wanted_mode(request) is not None:
        check_origin(request, settings)


def clear_session(response: Response, settings: Settings) -> None:
    response.headers.append("Set-Cookie", _cookie(settings, "", None))


def session_cookie(request: Request, settings: Settings) -> str | None:
    return request.cookies.get(cookie_name(settings))


# -- CSRF ------------------------------------------------------------------------------------------


def allowed_origins(settings: Settings) -> frozenset[str]:
    return frozenset((settings.public_origin, *settings.cors_origin_list))


def _request_origin(request: Request) -> str | None:
    sent = request.headers.get("origin")
    if sent is None:
        referer = request.headers.get("referer")
        if not referer:
            return None
        sent = referer
        try:
            parts = urlsplit(sent)
            sent = f"{parts.scheme}://{parts.netloc}"
        except ValueError:
            return None
    try:
        return origin(sent)
    except ValueError:
        return None  # "null", a path, a malformed value


def check_origin(request: Request, settings: Settings) -> None:
    """The request says it comes from the public URL's origin or an allowlisted one."""
    if _request_origin(request) not in allowed_origins(settings):
        raise CsrfRefused(details=[{"reason": "origin"}])


def check_csrf(request: Request, settings: Settings) -> None:
    """For a request the session cookie authenticates: a state-changing one needs the custom
    header and an allowed origin."""
    if request.method in SAFE_METHODS:
        return
    if wanted_mode(request) is None:
        raise CsrfRefused(details=[{"reason": "header"}])
    check_origin(request, settings)
