"""Password reset over HTTP: parse, call the domain, answer. No SQL, no rules."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from chaser_auth.api import browser
from chaser_auth.api.accounts import account_subject, forgive_login_failures, session_answer
from chaser_auth.api.deps import RuntimeDep, client_key, request_device, request_locale
from chaser_auth.api.errors import code_error_responses, error_responses
from chaser_auth.api.schemas import (
    AuthResponse,
    CodeRequest,
    MessageResponse,
    PasswordResetCodeResponse,
    PasswordResetConfirmRequest,
    PasswordResetRequest,
    PasswordResetVerifyRequest,
    PasswordResetVerifyResponse,
)
from chaser_auth.runtime import Runtime

router = APIRouter(prefix="/auth/password-reset", tags=["subpackage_auth"])
RESET_REQUEST_PATH = "/auth/password-reset/request"

# One constant body for every address — known, unknown, malformed, throttled — so the bytes
# cannot differ (docs/api.md). It is pre-encoded: nothing per request goes into it.
REQUESTED = MessageResponse(
    message="If an account exists for this email address, a link to reset its password "
    "has been sent to it."
)
REQUESTED_BODY = REQUESTED.model_dump_json().encode()


@router.post(
    RESET_REQUEST_PATH.removeprefix(router.prefix),
    operation_id="request-password-reset",
    summary="Request Password Reset",
    response_model=MessageResponse,
    responses={
        200: {"description": "Password reset email requested"},
        **error_responses(413, 422, 429),
    },
)
async def request_password_reset(
    body: PasswordResetRequest, request: Request, runtime: RuntimeDep
) -> Response:
    # The everyday request does not come here: `fastpath.RequestLane` answers it. This route
    # serves the rest (an unusual content type) and describes the endpoint in OpenAPI.
    await record_request(runtime, client_key(request), body.email, request_locale(request.scope))
    return Response(REQUESTED_BODY, media_type="application/json")


async def record_request(runtime: Runtime, client: str, email: str, locale: str) -> None:
    """The reset request's work, whichever way the request came: the per-client limit, then
    the request recorded durably (answered only once committed), then the worker woken.
    `locale` is the request's language, for a notice to an address without an account; the
    answer is the same whatever it is."""
    limit = runtime.settings.limit("rate_limit_reset_per_ip")
    await runtime.limiter.enforce(limit, "ip", client, time.time())
    await runtime.recovery.request(email, client, locale)
    runtime.wake.set()


@router.post(
    "/confirm",
    operation_id="confirm-password-reset",
    summary="Confirm Password Reset",
    response_model=AuthResponse,
    responses={
        200: {"description": "Password reset completed and session created"},
        **error_responses(400, 413, 422, 429),
    },
)
async def confirm_password_reset(
    body: PasswordResetConfirmRequest, request: Request, response: Response, runtime: RuntimeDep
) -> AuthResponse:
    browser.precheck(request, runtime.settings)
    client = await spend_token_attempt(runtime, request)
    result = await runtime.recovery.confirm(
        body.token, body.password, client=client, device=request_device(request)
    )
    runtime.wake.set()
    await forgive_login_failures(runtime, result.email)
    return session_answer(request, response, runtime, result)


async def spend_token_attempt(runtime: Runtime, request: Request) -> str:
    """Every endpoint that takes a link's token counts the attempt against the client's budget
    (`CHASER_AUTH_RATE_LIMIT_TOKEN_PER_IP`) before looking at it: guessing 256-bit tokens is
    hopeless, but each failed try is an audit row and a database look-up. The client's key."""
    client = client_key(request)
    await runtime.limiter.enforce(
        runtime.settings.limit("rate_limit_token_per_ip"), "token-ip", client, time.time()
    )
    return client


@router.post(
    "/verify",
    operation_id="verify-password-reset",
    summary="Check a password reset token without using it",
    response_model=PasswordResetVerifyResponse,
    responses={
        200: {"description": "The token may be used"},
        **error_responses(400, 413, 422, 429),
    },
)
async def verify_password_reset(
    body: PasswordResetVerifyRequest, request: Request, runtime: RuntimeDep
) -> PasswordResetVerifyResponse:
    await spend_token_attempt(runtime, request)
    row, _ = await runtime.recovery.check(body.token)
    return PasswordResetVerifyResponse(valid=True, expires_at=row.expires_at)


async def spend_code_attempt(runtime: Runtime, request: Request, email: str) -> str:
    """Every try at a one-time code counts twice before the code is looked at: against the
    client's token budget (`spend_token_attempt`), and against the address's budget of code
    tries from all clients together (`CHASER_AUTH_RATE_LIMIT_CODE_PER_ADDRESS`; in Redis when
    it is configured, else in the database, so every process shares it) — counted by the
    address as typed, normalised, so an address with no account is counted, and refused,
    exactly like one with an account. The client's key."""
    client = await spend_token_attempt(runtime, request)
    await runtime.code_tries.spend(account_subject(runtime, email))
    return client


@router.post(
    "/code",
    operation_id="exchange-password-reset-code",
    summary="Exchange the one-time code from a reset email for the link's token",
    response_model=PasswordResetCodeResponse,
    responses={
        200: {"description": "The code was right: the token works with confirm as the link's"},
        **code_error_responses(),
    },
)
async def exchange_password_reset_code(
    body: CodeRequest, request: Request, runtime: RuntimeDep
) -> PasswordResetCodeResponse:
    client = await spend_code_attempt(runtime, request, body.email)
    token, expires_at = await runtime.recovery.exchange_code(body.email, body.code, client=client)
    return PasswordResetCodeResponse(token=token, expires_at=expires_at)
