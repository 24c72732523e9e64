"""The errors chaser-auth can answer with, and the one JSON shape they all leave in.

    ChaserError                      code                 status  raised by
    ├── InvalidRequest               invalid_request      422     api (body failed validation)
    ├── InvalidAddress               invalid_email        422     domain (register, users create)
    ├── PayloadTooLarge              payload_too_large    413     api (body over the cap)
    ├── InvalidToken                 invalid_token        400     domain.recovery / sessions
    ├── InvalidCode                  invalid_code         400     domain (a one-time code)
    ├── WeakPassword                 weak_password        422     domain.passwords
    ├── InvalidCredentials           invalid_credentials  401     domain.accounts (login)
    ├── IncorrectPassword            incorrect_password   403     domain.accounts (change)
    ├── CsrfRefused                  csrf_refused         403     api.browser (cookie session)
    ├── OriginNotAllowed             origin_not_allowed   403     api.browser (CORS preflight)
    ├── NotAuthenticated             not_authenticated    401     api.deps (bearer missing/dead)
    ├── NotFound                     not_found            404     routing, unknown session
    ├── AccountExists                account_exists       409     users create, admin API
    ├── AccountDisabled              account_disabled     409     users reset-link, admin API
    ├── MethodNotAllowed             method_not_allowed   405     routing
    ├── RateLimited                  rate_limited         429     api (per-IP, login throttle)
    ├── ServiceUnavailable           service_unavailable  503     api (database unreachable)
    └── InternalError                internal_error       500     anything unexpected; says nothing

Domain code raises these; `api.errors` turns every one of them — and FastAPI's validation
errors, Starlette's HTTP errors and any unexpected exception — into
`{"error": {"code", "message", "details"}}`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ChaserError(Exception):
    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    message: ClassVar[str] = "The request could not be processed."

    def __init__(
        self,
        message: str | None = None,
        *,
        details: list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.text = message or self.message
        self.details = details or []
        self.headers = headers or {}
        super().__init__(self.text)

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.text, "details": self.details}}


class InvalidRequest(ChaserError):
    status = 422
    code = "invalid_request"
    message = "The request body is not valid."


class InvalidAddress(ChaserError):
    status = 422
    code = "invalid_email"
    message = "This is not a valid email address."


class PayloadTooLarge(ChaserError):
    status = 413
    code = "payload_too_large"
    message = "The request body is too large."


class InvalidToken(ChaserError):
    status = 400
    code = "invalid_token"
    message = "This link is invalid or has expired. Request a new one."

    def __init__(self, message: str | None = None, *, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason  # "expired" or "invalid": for metrics, never for the client


class InvalidCode(ChaserError):
    """A one-time code refused: wrong, for an address with no account or no live link, used,
    superseded, expired or out of tries — one answer for all."""

    status = 400
    code = "invalid_code"
    message = "This code is wrong or no longer works. Check the newest email, or ask for a new one."


class WeakPassword(ChaserError):
    status = 422
    code = "weak_password"
    message = "The password does not meet the password policy."


class InvalidCredentials(ChaserError):
    status = 401
    code = "invalid_credentials"
    message = "The email address or password is incorrect."


class IncorrectPassword(ChaserError):
    """The current password, asked again to change it; not 401, which would end the session
    in most clients."""

    status = 403
    code = "incorrect_password"
    message = "The current password is incorrect."


class CsrfRefused(ChaserError):
    """A state-changing request on a cookie session that did not prove it came from an
    allowed origin (docs/browser-apps.md)."""

    status = 403
    code = "csrf_refused"
    message = (
        "A request with a session cookie must come from this service's origin or an allowed "
        "one and carry the Chaser-Session header."
    )


class OriginNotAllowed(ChaserError):
    """A CORS preflight from an origin that is not in CHASER_AUTH_CORS_ORIGINS."""

    status = 403
    code = "origin_not_allowed"
    message = "This origin may not call the API from a browser."


class NotAuthenticated(ChaserError):
    status = 401
    code = "not_authenticated"
    message = "A valid session token is required."


class NotFound(ChaserError):
    status = 404
    code = "not_found"
    message = "Not found."


class AccountExists(ChaserError):
    status = 409
    code = "account_exists"
    message = "An account with this email address already exists."


class AccountDisabled(ChaserError):
    status = 409
    code = "account_disabled"
    message = "This account is disabled."


class MethodNotAllowed(ChaserError):
    status = 405
    code = "method_not_allowed"
    message = "This method is not allowed here."


class RateLimited(ChaserError):
    status = 429
    code = "rate_limited"
    message = "Too many requests. Try again later."


class ServiceUnavailable(ChaserError):
    status = 503
    code = "service_unavailable"
    message = "The service is temporarily unavailable. Try again shortly."


class InternalError(ChaserError):
    status = 500
    code = "internal_error"
    message = "Something went wrong on our side."
