"""Login, the current account, its sessions, password change, logout."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Request, Response

from chaser_auth.api import browser
from chaser_auth.api.deps import RuntimeDep, SessionDep, client_key, request_device
from chaser_auth.api.errors import error_responses
from chaser_auth.api.schemas import (
    AuthResponse,
    ErrorResponse,
    LoginRequest,
    MeResponse,
    PasswordChangeRequest,
    SessionInfo,
    SessionList,
)
from chaser_auth.domain import tokens
from chaser_auth.domain.addresses import address_key
from chaser_auth.domain.sessions import AuthResult
from chaser_auth.errors import IncorrectPassword, InvalidCredentials
from chaser_auth.runtime import Runtime

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
async def login(
    body: LoginRequest, request: Request, response: Response, runtime: RuntimeDep
) -> AuthResponse:
    # Three budgets (OWASP Authentication Cheat Sheet, "Account Lockout"; NIST SP 800-63B
    # "Rate Limiting"), each a 429 that is the same for a known and an unknown address:
    # - per client, every attempt whatever the address: each costs an argon2 verification, so
    #   one client cannot spend the server's CPU trying address after address;
    # - per account and client, failures: one client guessing at one account is slowed at
    #   once, without locking the owner out from elsewhere;
    # - per account across all clients, every attempt until one succeeds (or a reset does):
    #   a hundred clients cannot make more than that many guesses at one account per window.
    #   Counted before the verification, so attempts in flight count too.
    browser.precheck(request, runtime.settings)
    now = time.time()
    client = client_key(request)
    subject = account_subject(runtime, body.email)
    failures = runtime.settings.limit("rate_limit_login")
    account = runtime.settings.limit("rate_limit_login_per_account")
    await runtime.limiter.blocked(failures, "login", f"{subject}:{client}", now)
    await runtime.limiter.enforce(
        runtime.settings.limit("rate_limit_login_per_ip"), "login-ip", client, now
    )
    await runtime.limiter.enforce(account, "login-account", subject, now)
    try:
        result = await runtime.accounts.login(
            body.email, body.password, client=client, device=request_device(request)
        )
    except InvalidCredentials:
        await runtime.limiter.hit(failures, "login", f"{subject}:{client}")
        raise
    await runtime.limiter.clear(account, "login-account", subject)
    return session_answer(request, response, runtime, result)


def session_answer(
    request: Request, response: Response, runtime: Runtime, result: AuthResult
) -> AuthResponse:
    """The `AuthResponse` of a new session; with the session cookie too when the client asked
    for it (`Chaser-Session`, docs/browser-apps.md), and then without the token unless it
    asked for both."""
    token = browser.give_session(
        request, response, runtime.settings, result.token, result.expires_at
    )
    return AuthResponse(email=result.email, token=token, user_id=str(result.user_id))


def account_subject(runtime: Runtime, email: str) -> str:
    """What the per-account login budgets count: a keyed hash of the address as matched
    (normalised; the string itself when it is no address), so every spelling of one address,
    and an address with no account alike, share one count and no key holds an address."""
    return tokens.keyed_hash(runtime.secret, address_key(email) or email)


async def forgive_login_failures(runtime: Runtime, email: str) -> None:
    """After a password reset: the account's login budget across clients starts afresh, so
    someone who spent it guessing cannot keep the owner out once they have taken it back."""
    subject = account_subject(runtime, email)
    await runtime.limiter.clear(
        runtime.settings.limit("rate_limit_login_per_account"), "login-account", subject
    )


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
async def logout(auth: SessionDep, request: Request, runtime: RuntimeDep) -> Response:
    await runtime.sessions.revoke(auth.session)
    response = Response(status_code=204)
    if getattr(request.state, "session_cookie", False):
        browser.clear_session(response, runtime.settings)
    return response


@router.get(
    "/sessions",
    operation_id="list-sessions",
    summary="The account's live sessions",
    response_model=SessionList,
    responses=UNAUTHORIZED,
)
async def list_sessions(auth: SessionDep, runtime: RuntimeDep) -> SessionList:
    rows = await runtime.sessions.live(auth.user)
    return SessionList(
        sessions=[
            SessionInfo(
                id=row.id,
                created_at=row.created_at,
                last_seen_at=row.last_seen_at,
                expires_at=row.expires_at,
                current=row.id == auth.session.id,
                device=row.client_description,
                place=row.client_place,
            )
            for row in rows
        ]
    )


@router.delete(
    "/sessions/{session_id}",
    operation_id="end-session",
    summary="End one of the account's sessions (the current one included)",
    status_code=204,
    response_class=Response,
    responses={**UNAUTHORIZED, **error_responses(404, 422)},
)
async def end_session(
    session_id: uuid.UUID, request: Request, auth: SessionDep, runtime: RuntimeDep
) -> Response:
    await runtime.sessions.end(auth.user, session_id, client=client_key(request))
    response = Response(status_code=204)
    if session_id == auth.session.id and getattr(request.state, "session_cookie", False):
        browser.clear_session(response, runtime.settings)  # its own session: as a logout
    return response


@router.post(
    "/password/change",
    operation_id="change-password",
    summary="Change the password (a new session; every other one ends)",
    response_model=AuthResponse,
    responses={
        200: {"description": "Password changed and a new session created"},
        **UNAUTHORIZED,
        **error_responses(403, 413, 422, 429),
    },
)
async def change_password(
    body: PasswordChangeRequest,
    request: Request,
    response: Response,
    auth: SessionDep,
    runtime: RuntimeDep,
) -> AuthResponse:
    # Wrong current passwords count against the same per account+client budget as logins: a
    # stolen session must not become a password-guessing oracle.
    browser.precheck(request, runtime.settings)
    client = client_key(request)
    key = f"{auth.user.id}:{client}"
    item = runtime.settings.limit("rate_limit_login")
    await runtime.limiter.blocked(item, "password-change", key, time.time())
    try:
        result = await runtime.accounts.change_password(
            auth.user,
            body.current_password,
            body.password,
            client=client,
            device=request_device(request),
        )
    except IncorrectPassword:
        await runtime.limiter.hit(item, "password-change", key)
        raise
    runtime.wake.set()
    return session_answer(request, response, runtime, result)
