"""Changing the account's address over HTTP: ask (with the password), confirm (the new
mailbox's link), undo (the old mailbox's link). Parse, call the domain, answer."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from chaser_auth.api import browser
from chaser_auth.api.accounts import UNAUTHORIZED, session_answer
from chaser_auth.api.deps import RuntimeDep, SessionDep, client_key, request_device
from chaser_auth.api.errors import error_responses
from chaser_auth.api.reset import spend_token_attempt
from chaser_auth.api.schemas import (
    AuthResponse,
    EmailChangeRequest,
    EmailChangeTokenRequest,
    MessageResponse,
)
from chaser_auth.errors import IncorrectPassword

router = APIRouter(prefix="/auth/email/change", tags=["subpackage_auth"])

# One constant answer whether the new address is free, taken, or the account's own.
REQUESTED_BODY = (
    MessageResponse(
        message="If the new address can take this account, a link to confirm the change has "
        "been sent to it. Nothing changes until it is followed."
    )
    .model_dump_json()
    .encode()
)


@router.post(
    "",
    operation_id="change-email",
    summary="Ask to move the account to another address (always 202 for a right password)",
    status_code=202,
    response_model=MessageResponse,
    responses={
        202: {"description": "Accepted; a confirmation link goes to a free new address"},
        **UNAUTHORIZED,
        **error_responses(403, 413, 422, 429),
    },
)
async def change_email(
    body: EmailChangeRequest, request: Request, auth: SessionDep, runtime: RuntimeDep
) -> Response:
    # Wrong current passwords count against the login budget, as for a password change.
    client = client_key(request)
    key = f"{auth.user.id}:{client}"
    item = runtime.settings.limit("rate_limit_login")
    await runtime.limiter.blocked(item, "password-change", key, time.time())
    try:
        await runtime.address_change.request(
            auth.user, body.current_password, body.email, client=client
        )
    except IncorrectPassword:
        await runtime.limiter.hit(item, "password-change", key)
        raise
    runtime.wake.set()
    return Response(REQUESTED_BODY, status_code=202, media_type="application/json")


@router.post(
    "/confirm",
    operation_id="confirm-email-change",
    summary="Move the account to the new address (a new session; every other one ends)",
    response_model=AuthResponse,
    responses={
        200: {"description": "The address changed and a session created"},
        **error_responses(400, 413, 422, 429),
    },
)
async def confirm_email_change(
    body: EmailChangeTokenRequest, request: Request, response: Response, runtime: RuntimeDep
) -> AuthResponse:
    browser.precheck(request, runtime.settings)
    client = await spend_token_attempt(runtime, request)
    result = await runtime.address_change.confirm(
        body.token, client=client, device=request_device(request)
    )
    runtime.wake.set()
    return session_answer(request, response, runtime, result)


@router.post(
    "/undo",
    operation_id="undo-email-change",
    summary="Move the account back to the address the undo link was sent to",
    response_model=MessageResponse,
    responses={
        200: {"description": "The address is back; every session ended"},
        **error_responses(400, 413, 422, 429),
    },
)
async def undo_email_change(
    body: EmailChangeTokenRequest, request: Request, runtime: RuntimeDep
) -> MessageResponse:
    client = await spend_token_attempt(runtime, request)
    address = await runtime.address_change.undo(body.token, client=client)
    return MessageResponse(
        message=f"The account is back at {address}. Every session has ended: reset the "
        "password now, as whoever moved the account knew it."
    )
