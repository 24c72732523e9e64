"""Sign-up and email verification over HTTP: parse, call the domain, answer."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from chaser_auth.api import browser
from chaser_auth.api.accounts import account_subject, session_answer
from chaser_auth.api.deps import RuntimeDep, client_key, request_device, request_languages
from chaser_auth.api.errors import code_error_responses, error_responses
from chaser_auth.api.reset import spend_code_attempt, spend_token_attempt
from chaser_auth.api.schemas import (
    AuthResponse,
    CodeRequest,
    MessageResponse,
    RegisterRequest,
    VerifyEmailRequest,
    VerifyEmailResendRequest,
)
from chaser_auth.i18n import choose

router = APIRouter(prefix="/auth", tags=["subpackage_auth"])

# One constant answer whether or not the address already has an account (docs/api.md).
REGISTERED_BODY = (
    MessageResponse(
        message="Thank you. We have sent an email to this address: follow it to finish "
        "setting up your account."
    )
    .model_dump_json()
    .encode()
)


@router.post(
    "/register",
    operation_id="register",
    summary="Create an account (always answers 202; the email says what happened)",
    status_code=202,
    response_model=MessageResponse,
    responses={
        202: {"description": "Accepted; a verification or an 'account exists' email follows"},
        **error_responses(413, 422, 429),
    },
)
async def register(body: RegisterRequest, request: Request, runtime: RuntimeDep) -> Response:
    client = client_key(request)
    await runtime.limiter.enforce(
        runtime.settings.limit("rate_limit_register_per_ip"), "register-ip", client, time.time()
    )
    wanted = ([body.locale] if body.locale else []) + request_languages(request.scope)
    await runtime.registration.register(body.email, body.password, client, choose(wanted))
    runtime.wake.set()
    return Response(REGISTERED_BODY, status_code=202, media_type="application/json")


# One constant answer for every address: waiting for verification, verified, unknown, disabled.
RESENT_BODY = (
    MessageResponse(
        message="If this address has an account waiting for verification, a new link has "
        "been sent to it."
    )
    .model_dump_json()
    .encode()
)


@router.post(
    "/verify-email/resend",
    operation_id="resend-verification-email",
    summary="Send a new email-verification link (always answers 202)",
    status_code=202,
    response_model=MessageResponse,
    responses={
        202: {"description": "Accepted; a new link follows if the address is waiting for one"},
        **error_responses(413, 422, 429),
    },
)
async def resend_verification(
    body: VerifyEmailResendRequest, request: Request, runtime: RuntimeDep
) -> Response:
    # Per client, and per address as typed (a keyed hash, known or not): the same 429 for
    # every address. The mail also counts against the per-address mail budget, in the worker.
    now = time.time()
    client = client_key(request)
    await runtime.limiter.enforce(
        runtime.settings.limit("rate_limit_resend_per_ip"), "resend-ip", client, now
    )
    await runtime.limiter.enforce(
        runtime.settings.limit("rate_limit_resend_per_address"),
        "resend-address",
        account_subject(runtime, body.email),
        now,
    )
    await runtime.registration.request_resend(body.email, client)
    runtime.wake.set()
    return Response(RESENT_BODY, status_code=202, media_type="application/json")


@router.post(
    "/verify-email",
    operation_id="verify-email",
    summary="Verify Email",
    response_model=AuthResponse,
    responses={
        200: {"description": "Email verified and session created"},
        **error_responses(400, 413, 422, 429),
    },
)
async def verify_email(
    body: VerifyEmailRequest, request: Request, response: Response, runtime: RuntimeDep
) -> AuthResponse:
    browser.precheck(request, runtime.settings)
    client = await spend_token_attempt(runtime, request)
    result = await runtime.registration.verify(
        body.token, client=client, device=request_device(request)
    )
    return session_answer(request, response, runtime, result)


@router.post(
    "/verify-email/code",
    operation_id="verify-email-code",
    summary="Verify Email with the one-time code from the verification email",
    response_model=AuthResponse,
    responses={
        200: {"description": "Email verified and session created"},
        **code_error_responses(),
    },
)
async def verify_email_code(
    body: CodeRequest, request: Request, response: Response, runtime: RuntimeDep
) -> AuthResponse:
    browser.precheck(request, runtime.settings)
    client = await spend_code_attempt(runtime, request, body.email)
    result = await runtime.registration.verify_code(body.email, body.code, client=client)
    return session_answer(request, response, runtime, result)
