"""One pure-ASGI layer around every request (cheaper than BaseHTTPMiddleware on the hot path):

- reads the body up front with a hard cap (413 past `MAX_BODY`, before any parsing);
- gives every response `X-Request-ID`, `Cache-Control: no-store` and `nosniff`;
- turns any exception that escaped the handlers into the one error shape with a bare 500 — no
  trace, no exception text (it may quote SQL parameters, i.e. addresses);
- writes the access log: method, path without query string, status, time, request id. Never
  the body, never a query string (a mistaken `?token=` must not reach the logs);
- counts the request for `/metrics` by route template (never the raw path, which may hold ids).
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chaser_auth import metrics
from chaser_auth.errors import ChaserError, InternalError, PayloadTooLarge
from chaser_auth.logs import request_id as current_request_id

MAX_BODY = 4096
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_BASE_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
]

access = logging.getLogger("chaser_auth.access")
errors = logging.getLogger("chaser_auth.errors")


def error_response_parts(error: ChaserError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = json.dumps(error.body(), separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    return error.status, headers, body


class EdgeMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        request_id = new_request_id(headers.get(b"x-request-id"))
        scope.setdefault("state", {})["request_id"] = request_id
        bound = current_request_id.set(request_id)
        extra = edge_headers(request_id)
        status_seen: dict[str, Any] = {"status": 500, "started": False}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen["status"] = message["status"]
                status_seen["started"] = True
                headers = [h for h in message.get("headers", []) if h[0] != b"cache-control"]
                message["headers"] = headers + extra
            await send(message)

        try:
            replay = await self._read_body(headers.get(b"content-length"), receive)
            if isinstance(replay, ChaserError):
                await send_error(replay, send_with_headers)
            else:
                await self.app(scope, replay, send_with_headers)
        except Exception as exc:  # noqa: BLE001 - last line of defence; logged without its text
            log_unhandled(exc, scope)
            if not status_seen["started"]:
                await send_error(InternalError(), send_with_headers)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            answered(scope, template, status_seen["status"], started)
            current_request_id.reset(bound)

    @staticmethod
    async def _read_body(declared: bytes | None, receive: Receive) -> Receive | ChaserError:
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            return PayloadTooLarge(details=[{"max_bytes": MAX_BODY}])
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return receive
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                return PayloadTooLarge(details=[{"max_bytes": MAX_BODY}])
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        whole: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        return replay(whole, receive)


def new_request_id(incoming: bytes | None) -> str:
    """The client's `X-Request-ID` if it is a sane one, else a fresh random id."""
    if incoming:
        text = incoming.decode("latin-1")
        if _REQUEST_ID.fullmatch(text):
            return text
    return f"{random.getrandbits(128):032x}"


def edge_headers(request_id: str) -> list[tuple[bytes, bytes]]:
    """The headers every response gets."""
    return [(b"x-request-id", request_id.encode()), *_BASE_HEADERS]


def log_unhandled(exc: Exception, scope: Scope) -> None:
    errors.error("unhandled %s on %s %s", type(exc).__name__, scope["method"], scope["path"])


# The metric children per (route template, method, status), looked up once: `labels()` takes
# a lock and builds its key on every call. Bounded: templates are the app's routes, and the
# HTTP parser knows a fixed list of methods.
_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def answered(scope: Scope, template: str, status: int, started: float) -> None:
    """Count and log an answered request (metrics by route template; the access log line)."""
    elapsed = time.perf_counter() - started
    method = scope["method"]
    key = (template, method, status)
    children = _children.get(key)
    if children is None:
        children = _children[key] = (
            metrics.REQUESTS.labels(template, method, str(status)),
            metrics.LATENCY.labels(template, method),
        )
    children[0].inc()
    children[1].observe(elapsed)
    access.info(
        "%s %s %s %.1fms",
        method,
        scope["path"],
        status,
        elapsed * 1000,
        extra={
            "method": method,
            "path": scope["path"],
            "status": status,
            "duration_ms": round(elapsed * 1000, 2),
        },
    )


def replay(first: Message, receive: Receive) -> Receive:
    """`receive` with `first` put in front of what it has still to give."""
    delivered = False

    async def again() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return first
        return await receive()

    return again


async def send_error(error: ChaserError, send: Send) -> None:
    status, headers, body = error_response_parts(error)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
