"""The seed endpoint's everyday request, without FastAPI's machinery.

`POST /auth/password-reset/request` is the endpoint a flood hits, and FastAPI's routing,
dependency solving and response building cost several times the work the request itself
needs. So this layer, inside `EdgeMiddleware` (request id, headers, metrics, access log stay),
answers the one ordinary case itself: a JSON body that validates as `PasswordResetRequest`
(the same pydantic model, in strict mode). Everything else — another path or method, another
content type, a body that does not validate — goes on to FastAPI unchanged, so every error
keeps its exact shape and the OpenAPI document still describes the route. Both ways run the
same `reset.record_request` and answer with the same bytes.
"""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from chaser_auth.api.deps import client_key
from chaser_auth.api.errors import DATABASE_ERRORS, database_error
from chaser_auth.api.middleware import replay, send_error
from chaser_auth.api.reset import REQUESTED_BODY, SEED_PATH, record_request
from chaser_auth.api.schemas import PasswordResetRequest
from chaser_auth.errors import ChaserError

_ANSWER_HEADERS = [
    (b"content-length", str(len(REQUESTED_BODY)).encode()),
    (b"content-type", b"application/json"),
]


class SeedFastPath:
    def __init__(self, app: ASGIApp, route: BaseRoute) -> None:
        self.app = app
        self.route = route  # what the access log and the metrics name the request by

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != SEED_PATH
            or scope["method"] != "POST"
            or not _is_json(scope)
        ):
            await self.app(scope, receive, send)
            return
        # EdgeMiddleware has read the whole body already: it comes as one message.
        message = await receive()
        try:
            body = PasswordResetRequest.model_validate_json(message.get("body", b""))
        except ValidationError:
            await self.app(scope, replay(message, receive), send)
            return
        scope["route"] = self.route
        try:
            await record_request(scope["app"].state.runtime, client_key(Request(scope)), body.email)
        except ChaserError as exc:
            await send_error(exc, send)
            return
        except DATABASE_ERRORS as exc:
            await send_error(database_error(exc), send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": _ANSWER_HEADERS})
        await send({"type": "http.response.body", "body": REQUESTED_BODY})


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            media_type: bytes = value.split(b";", 1)[0].strip().lower()
            return media_type == b"application/json"
    return False
