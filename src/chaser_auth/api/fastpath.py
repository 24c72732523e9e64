"""The reset request's everyday case, answered in front of the whole stack.

`POST /auth/password-reset/request` is the endpoint a flood hits, and every layer of the stack
(FastAPI's error and exception middleware, our edge middleware's per-request closure, routing,
dependency solving, response building) costs several times the work the request itself needs.
So `RequestLane` sits outside all of them and answers the one ordinary case itself: a JSON body,
declared with its length and at most `MAX_BODY` bytes, that validates as `PasswordResetRequest`
(the same pydantic model). It does what the edge middleware does for every request — request
id, the common headers, metrics by route template, the access log, and a bare 500 in the one
error shape should anything escape. Everything else — another path or method, another content
type, a chunked or oversized body, a body that does not validate — goes on to the full stack
unchanged (the body already read is handed on), so every error keeps its exact shape and the
OpenAPI document still describes the route. Both ways run the same `reset.record_request` and
answer with the same bytes.
"""

from __future__ import annotations

import time

from pydantic import ValidationError
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chaser_auth.api.deps import request_locale, scope_client_key
from chaser_auth.api.errors import DATABASE_ERRORS, database_error
from chaser_auth.api.middleware import (
    MAX_BODY,
    answered,
    edge_headers,
    log_unhandled,
    new_request_id,
    replay,
    send_error,
)
from chaser_auth.api.reset import REQUESTED_BODY, RESET_REQUEST_PATH, record_request
from chaser_auth.api.schemas import PasswordResetRequest
from chaser_auth.errors import ChaserError, InternalError
from chaser_auth.logs import request_id as current_request_id

_ANSWER_HEADERS = [
    (b"content-length", str(len(REQUESTED_BODY)).encode()),
    (b"content-type", b"application/json"),
]


class RequestLane:
    def __init__(self, app: ASGIApp, route: BaseRoute, *, cors: bool = False) -> None:
        self.app = app  # the full stack
        self.cors = cors  # CORS is on: a request with an Origin goes to the stack, which answers it
        self.template: str = getattr(
            route, "path", RESET_REQUEST_PATH
        )  # the route's name in metrics

    def _ordinary(self, headers: list[tuple[bytes, bytes]]) -> tuple[bool, bytes | None]:
        """Whether the lane may answer a request with these headers (a JSON body declared
        with its length, at most MAX_BODY; no Origin while CORS is on, as the stack's CORS
        layer adds what that origin may see), and the client's request id."""
        is_json = cross_origin = False
        length = incoming_id = None
        for name, value in headers:
            if name == b"content-type":
                is_json = value.split(b";", 1)[0].strip().lower() == b"application/json"
            elif name == b"content-length":
                length = value
            elif name == b"x-request-id":
                incoming_id = value
            elif name == b"origin":
                cross_origin = self.cors
        sized = length is not None and length.isdigit() and int(length) <= MAX_BODY
        return is_json and sized and not cross_origin, incoming_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != RESET_REQUEST_PATH
            or scope["method"] != "POST"
        ):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        ordinary, incoming_id = self._ordinary(scope["headers"])
        if not ordinary:
            await self.app(scope, receive, send)
            return
        message = await receive()
        if message["type"] != "http.request" or message.get("more_body", False):
            await self.app(scope, replay(message, receive), send)
            return
        try:
            body = PasswordResetRequest.model_validate_json(message.get("body", b""))
        except ValidationError:
            await self.app(scope, replay(message, receive), send)
            return

        request_id = new_request_id(incoming_id)
        scope.setdefault("state", {})["request_id"] = request_id
        bound = current_request_id.set(request_id)
        status = 500
        try:
            error: ChaserError | None = None
            try:
                runtime = scope["app"].state.runtime
                await record_request(
                    runtime, scope_client_key(scope), body.email, request_locale(scope)
                )
            except ChaserError as exc:
                error = exc
            except DATABASE_ERRORS as exc:
                error = database_error(exc)
            except Exception as exc:  # noqa: BLE001 - last line of defence, as EdgeMiddleware's
                log_unhandled(exc, scope)
                error = InternalError()
            extra = edge_headers(request_id)
            if error is None:
                status = 200
                start = {"type": "http.response.start", "status": 200}
                await send({**start, "headers": _ANSWER_HEADERS + extra})
                await send({"type": "http.response.body", "body": REQUESTED_BODY})
            else:
                status = error.status

                async def with_headers(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        message["headers"] = [*message["headers"], *extra]
                    await send(message)

                await send_error(error, with_headers)
        finally:
            answered(scope, self.template, status, started)
            current_request_id.reset(bound)
