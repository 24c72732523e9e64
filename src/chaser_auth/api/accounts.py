"""Login, the current account, logout."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response

from chaser_auth.api.deps import RuntimeDep, SessionDep, client_key
from chaser_auth.api.errors import error_responses
from chaser_auth.api.schemas import AuthResponse, ErrorResponse, LoginRequest, MeResponse
from chaser_auth.domain import tokens
from chaser_auth.domain.addresses import address_key
from chaser_auth.errors import InvalidCredentials

router = APIRouter(prefix="/auth", tags=["subpackage_auth"])
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing, unknown or ended session"}
}


@router.post(
    "/login",
    operation_id="login",
    summary="Log in with email and password",
    response_model=AuthResponse,
    responses={
        200: {"description": "Logged in and session created"},
        401: {"model": ErrorResponse, "description": "Wrong email or password"},
        **error_responses(413, 422, 429),
    },
)
async def login(body: LoginRequest, request: Request, runtime: RuntimeDep) -> AuthResponse:
    # Failed logins are limited per account *and* client address, so an attacker cannot lock
    # a person out from elsewhere (OWASP Authentication Cheat Sheet, "Account Lockout").
    subject = tokens.keyed_hash(runtime.secret, address_key(body.email) or body.email)
    key = f"{subject}:{client_key(request)}"
    item = runtime.settings.limit("rate_limit_login")
    await runtime.limiter.blocked(item, "login", key, time.time())
    try:
        result = await runtime.accounts.login(body.email, body.password)
    except InvalidCredentials:
        await runtime.limiter.hit(item, "login", key)
        raise
    return AuthResponse(email=result.email, token=result.token, user_id=str(result.user_id))


@router.get(
    "/me",
    operation_id="me",
    summary="The account behind the bearer token",
    response_model=MeResponse,
    responses=UNAUTHORIZED,
)
async def me(auth: SessionDep) -> MeResponse:
    user = auth.user
    return MeResponse(
        user_id=user.id,
        email=user.email,
        email_verified=user.email_verified,
        created_at=user.created_at,
        password_changed_at=user.password_changed_at,
    )


@router.post(
    "/logout",
    operation_id="logout",
    summary="End the current session",
    status_code=204,
    response_class=Response,
    responses=UNAUTHORIZED,
)
async def logout(auth: SessionDep, runtime: RuntimeDep) -> Response:
    await runtime.sessions.revoke(auth.session.id)
    return Response(status_code=204)
