"""Every way a request can fail leaves through here, in the one shape (`ChaserError.body`).

Validation details name the field and the problem but never echo the input: the input may be
a password."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException

from chaser_auth.api.schemas import ErrorResponse
from chaser_auth.errors import (
    ChaserError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
)

log = logging.getLogger("chaser_auth.errors")
DB_RETRY_AFTER = "5"


ERROR_TEXT = {
    400: "Invalid or expired token",
    401: "Missing, unknown or ended session",
    403: "The current password is incorrect",
    404: "No such session of this account",
    413: "Request body over 4 KiB",
    422: "Body missing, not JSON, or fields of the wrong type; or a weak password",
    429: "Too many requests from this client address",
}


CODE_ERROR_TEXT = {
    400: "invalid_code: a wrong code, an address with no account or no live link, a used, "
    "superseded or expired code, or one out of tries — one answer for all",
    429: "Too many tries from this client address (X-RateLimit-Scope: token-ip), or at the "
    "codes of this address from everywhere (code-address) — the same for every address",
}


def code_error_responses() -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries of the one-time code exchanges."""
    texts = {**ERROR_TEXT, **CODE_ERROR_TEXT}
    return {
        code: {"model": ErrorResponse, "description": texts[code]} for code in (400, 413, 422, 429)
    }


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error statuses, all in the one error shape."""
    return {code: {"model": ErrorResponse, "description": ERROR_TEXT[code]} for code in codes}


# Every 401 names how to authenticate (RFC 9110 §15.5.2 requires a challenge): a bearer token,
# a session token from an AuthResponse (RFC 6750). A refused token adds error="invalid_token"
# (`api.deps.current_session`); the admin API has a realm of its own.
CHALLENGE = 'Bearer realm="chaser-auth"'


def render(error: ChaserError) -> JSONResponse:
    headers = error.headers
    if error.status == 401 and "WWW-Authenticate" not in headers:
        headers = {**headers, "WWW-Authenticate": CHALLENGE}
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors():
        loc = [part for part in err.get("loc", ()) if part != "body"]
        kind = err.get("type", "invalid")
        if kind == "json_invalid":
            message = "The body is not valid JSON."
        elif kind == "missing" and not loc:
            message = "A JSON body is required."
        elif kind == "missing":
            message = "This field is required."
        elif kind in ("string_type", "model_type", "model_attributes_type", "dict_type"):
            message = (
                "Expected a JSON object (with Content-Type: application/json)."
                if not loc
                else "Expected a string."
            )
        else:
            message = str(err.get("msg", "Invalid value."))
        details.append(
            {"field": ".".join(str(p) for p in loc) or None, "type": kind, "message": message}
        )
    return details


DATABASE_ERRORS = (DBAPIError, ConnectionError, TimeoutError)


def database_error(exc: Exception) -> ChaserError:
    """What a database fault answers: unreachable, full, or locked past the busy timeout is a
    clear 503 the client may retry, never a 500 (docs/operations.md, "When something fails":
    a 500 is for our own bugs only); a statement the database refuses is our bug, a bare 500."""
    if isinstance(exc, DBAPIError) and not database_unavailable(exc):
        log.error("database error %s", type(exc.orig).__name__)
        return InternalError()
    log.warning("database unavailable: %s", type(exc).__name__)
    return ServiceUnavailable(headers={"Retry-After": DB_RETRY_AFTER})


def install(app: FastAPI) -> None:
    @app.exception_handler(ChaserError)
    async def _chaser(_: Request, exc: ChaserError) -> JSONResponse:
        return render(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return render(InvalidRequest(details=_validation_details(exc)))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return render(NotFound())
        if exc.status_code == 400:
            # FastAPI could not decode the body at all (not UTF-8, nested too deep): the same
            # answer as any other body that is not JSON.
            return render(
                InvalidRequest(
                    details=[
                        {
                            "field": None,
                            "type": "json_invalid",
                            "message": "The body is not valid JSON.",
                        }
                    ]
                )
            )
        if exc.status_code == 405:
            error = MethodNotAllowed()
            error.headers = dict(exc.headers or {})
            return render(error)
        generic = ChaserError(str(exc.detail) if exc.status_code < 500 else None)
        response = render(generic)
        response.status_code = exc.status_code
        return response

    async def _database_down(_: Request, exc: Exception) -> JSONResponse:
        return render(database_error(exc))

    for kind in DATABASE_ERRORS:
        app.add_exception_handler(kind, _database_down)


# SQLSTATE classes that mean "the server cannot serve us now", not "this statement is wrong":
# 08 connection exception, 53 insufficient resources, 57 operator intervention (shutdown,
# terminated backend), and 55000 "database is not accepting connections".
_UNAVAILABLE_CLASSES = ("08", "53", "57")


def database_unavailable(exc: DBAPIError) -> bool:
    """The server cannot serve us now (as opposed to a statement that is wrong). SQLAlchemy's
    OperationalError and InterfaceError say so for every driver (SQLite: locked, disk full)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if exc.connection_invalidated or isinstance(exc.orig, OSError):
        return True
    state = str(getattr(exc.orig, "sqlstate", None) or "")
    return state[:2] in _UNAVAILABLE_CLASSES or state == "55000"
