"""What routers need from a request: the runtime, the client's address, the bearer session."""

from __future__ import annotations

import ipaddress
import socket
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import Scope

from chaser_auth import i18n
from chaser_auth.api import browser
from chaser_auth.api.errors import CHALLENGE
from chaser_auth.domain import devices
from chaser_auth.domain.devices import Device
from chaser_auth.domain.sessions import Authenticated
from chaser_auth.errors import NotAuthenticated
from chaser_auth.runtime import Runtime

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


async def get_runtime(request: Request) -> Runtime:
    # async: a plain `def` dependency would cost a thread-pool hop on every request.
    runtime: Runtime = request.app.state.runtime
    return runtime


def parse_proxies(value: str | None) -> tuple[Network, ...]:
    if not value:
        return ()
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False)
        for part in value.split(",")
        if part.strip()
    )


def client_key(request: Request) -> str:
    """The unit a per-client limit counts: one IPv4 address, or one IPv6 /64 — a single
    subscriber usually holds a whole /64 (RFC 6177), so per-address IPv6 limits are free to
    dodge. An IPv4-mapped IPv6 address counts as its IPv4 address."""
    return scope_client_key(request.scope)


def scope_client_key(scope: Scope) -> str:
    """`client_key` from the ASGI scope (for the request lane, which builds no `Request`)."""
    return _limit_unit(scope_client_address(scope))


def scope_client_address(scope: Scope) -> str:
    """The peer's address; behind `CHASER_AUTH_TRUSTED_PROXIES`, the right-most address in
    X-Forwarded-For (all its lines, as one list) that is not itself a trusted proxy (left-most
    entries are client-supplied and forgeable — OWASP, and MDN's X-Forwarded-For "Selecting
    an IP address")."""
    client = scope.get("client")
    peer = client[0] if client else "unknown"
    proxies: tuple[Network, ...] = scope["app"].state.trusted_proxies
    if not proxies or not _within(peer, proxies):
        return peer
    forwarded = b",".join(v for k, v in scope["headers"] if k == b"x-forwarded-for")
    hops = [_hop_address(h.strip()) for h in forwarded.decode("latin-1").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _within(hop, proxies):
            return hop
    return peer


def request_device(request: Request) -> Device:
    """The browser or client of this request (User-Agent) and its network."""
    return Device(request.headers.get("user-agent"), scope_client_address(request.scope))


def _hop_address(hop: str) -> str:
    """A hop's address without the port some proxies add: "192.0.2.1:5678", "[2001:db8::1]:443"
    and "[2001:db8::1]" (the node forms of RFC 7239 §6) are their address, so a client's
    every connection counts as one client; a bare IPv6 address ("2001:db8::1", colons and
    no brackets) stays as it is. Plain string work: this runs on every request."""
    if hop.startswith("["):
        address, bracket, port = hop[1:].partition("]")
        if bracket and (not port or (port[0] == ":" and port[1:].isdigit())):
            return address
        return hop
    address, colon, port = hop.partition(":")
    if colon and port.isdigit() and "." in address:  # one colon, after an IPv4 address
        return address
    return hop


_V4_MAPPED = bytes(10) + b"\xff\xff"


def _packed(address: str) -> bytes | None:
    """The address as 4 or 16 bytes, or None when it is not an IP address. Parsed by the C
    library: `ipaddress` parses in Python, at several microseconds an address — more than the
    rest of a reset request's limit check — and a flood from many addresses defeats any cache
    in front of it. An IPv6 zone ("%eth0") is dropped: the address is the same host."""
    try:
        if ":" in address:
            return socket.inet_pton(socket.AF_INET6, address.partition("%")[0])
        return socket.inet_pton(socket.AF_INET, address)
    except (OSError, ValueError):  # not an address; ValueError: an embedded NUL
        return None


def _limit_unit(address: str) -> str:
    packed = _packed(address)
    if packed is None:
        return address
    if len(packed) == 4:
        return socket.inet_ntop(socket.AF_INET, packed)
    if packed.startswith(_V4_MAPPED):
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


def _within(address: str, networks: tuple[Network, ...]) -> bool:
    packed = _packed(address)
    if packed is None:
        return False
    ip = ipaddress.ip_address(packed)
    return any(ip in net for net in networks)


# Declared through FastAPI's HTTPBearer so the OpenAPI document shows which endpoints need a
# session; auto_error=False leaves a missing or non-Bearer header to `authenticate`, which
# answers it in the one error shape.
_bearer = HTTPBearer(auto_error=False, description="A session token from an AuthResponse")


async def current_session(
    request: Request,
    runtime: Annotated[Runtime, Depends(get_runtime)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Authenticated:
    """The live session of the bearer token or, without an `Authorization` header, of the
    session cookie — whose state-changing requests must pass the CSRF check first
    (docs/browser-apps.md). Else 401 with `WWW-Authenticate: Bearer realm="chaser-auth"` — and
    `error="invalid_token"` when a token was sent but is not a live session (RFC 6750 §3.1), so
    a client can tell "sign in" from "sign in again"."""
    token = credentials.credentials if credentials else None
    if credentials is None and "authorization" not in request.headers:
        cookie = browser.session_cookie(request, runtime.settings)
        if cookie is not None:
            browser.check_csrf(request, runtime.settings)
            request.state.session_cookie = True
            token = cookie
    try:
        return await runtime.sessions.authenticate(token, place=place(request))
    except NotAuthenticated as exc:
        if token:
            exc.headers = {
                **exc.headers,
                "WWW-Authenticate": f'{CHALLENGE}, error="invalid_token"',
            }
        raise


def place(request: Request) -> str | None:
    return devices.coarsen(scope_client_address(request.scope))


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SessionDep = Annotated[Authenticated, Depends(current_session)]


def _accept_language(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"accept-language":
            return str(value.decode("latin-1"))
    return None


def request_languages(scope: Scope) -> list[str]:
    """The languages the request's `Accept-Language` asks for, most wanted first."""
    return i18n.parse_accept_language(_accept_language(scope))


def request_locale(scope: Scope) -> str:
    """The shipped locale that best answers the request's `Accept-Language` (English if none
    does)."""
    return i18n.locale_for_header(_accept_language(scope))
