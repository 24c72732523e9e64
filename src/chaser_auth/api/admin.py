"""The admin API: what an operator may do to accounts and to the outbox, over HTTP, for a support
tool or an application's back office. Served only on the operator listener (`api/operator.py`),
never on the public one, with an OpenAPI document of its own (`/admin/openapi.json`).

Every call presents an admin key as `Authorization: Bearer <key>` (`domain.admin.AdminKeys`,
`CHASER_AUTH_ADMIN_KEYS`); the key is checked before anything else, the body included, so a
caller without one learns nothing but 401. Every call is recorded in the audit trail
(`admin_call`, with the key's name, the operation and the status it was answered with), and so
is every refusal (`admin_refused`); each action also records its own event (`account_disabled`
…) naming the key. The actions are `domain.admin`'s, the same the command line calls.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from pydantic import model_validator

from chaser_auth.api.deps import RuntimeDep
from chaser_auth.api.schemas import ErrorResponse, Schema
from chaser_auth.errors import ChaserError, NotAuthenticated
from chaser_auth.runtime import Runtime
from chaser_auth.store.tables import OutboxMessage, User

PREFIX = "/admin"
OPENAPI_URL = f"{PREFIX}/openapi.json"
REALM = 'Bearer realm="chaser-auth admin"'

DESCRIPTION = """The admin API of chaser-auth, on the operator listener only
(`CHASER_AUTH_OPERATOR_ADDRESS`). Every call needs an admin key from `CHASER_AUTH_ADMIN_KEYS`
as `Authorization: Bearer <key>`, and is recorded in the audit trail with the key's name.

Every error has one shape: `{"error": {"code", "message", "details"}}`."""


# Declared for the OpenAPI document (which then shows the scheme on every operation); the check
# itself is `AdminRoute`'s, before the body is even read.
_admin_key = HTTPBearer(
    auto_error=False,
    scheme_name="AdminKey",
    description="An admin key whose digest is in CHASER_AUTH_ADMIN_KEYS",
)


def _caller(request: Request) -> str | None:
    return request.client.host if request.client else None


class AdminRoute(APIRoute):
    """A route that checks the admin key first and records the call in the audit trail."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        operation = self.operation_id or self.name

        async def checked(request: Request) -> Response:
            runtime: Runtime = request.app.state.runtime
            header = request.headers.get("authorization", "")
            scheme, _, presented = header.partition(" ")
            name = None
            if scheme.lower() == "bearer":
                name = runtime.admin_keys.identify(presented.strip())
            if name is None:
                reason = "unknown_key" if header else "no_key"
                await runtime.admin.record_refused(operation, reason, client=_caller(request))
                raise NotAuthenticated(
                    "A valid admin key is required (Authorization: Bearer <key>).",
                    headers={
                        "WWW-Authenticate": REALM + (', error="invalid_token"' if header else "")
                    },
                )
            request.state.admin_key = name
            status = 500
            try:
                response = await handle(request)
                status = response.status_code
                return response
            except ChaserError as exc:
                status = exc.status
                raise
            except RequestValidationError:
                status = 422
                raise
            finally:
                await runtime.admin.record_call(
                    name,
                    operation,
                    status,
                    user_id=_account_of(request),
                    client=_caller(request),
                )

        return checked


def _account_of(request: Request) -> uuid.UUID | None:
    """The account a call was about: the one it created, or the one its path names."""
    created = getattr(request.state, "account_id", None)
    if isinstance(created, uuid.UUID):
        return created
    with contextlib.suppress(KeyError, ValueError, TypeError):
        return uuid.UUID(str(request.path_params["account_id"]))
    return None


def _key(request: Request) -> str:
    name: str = request.state.admin_key
    return name


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No admin key, or one that is not configured"},
    422: {"model": ErrorResponse, "description": "Body or parameters not valid"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such account"},
}

router = APIRouter(
    prefix=PREFIX,
    route_class=AdminRoute,
    dependencies=[Security(_admin_key)],
    responses=ERRORS,
)

# -- schemas ------------------------------------------------------------------------------------


class Account(Schema):
    """An account as an operator sees it (never its password or its hash)."""

    id: uuid.UUID
    email: str
    email_verified: bool
    active: bool
    has_password: bool
    created_at: datetime
    password_changed_at: datetime | None

    @classmethod
    def of(cls, user: User) -> Account:
        return cls(
            id=user.id,
            email=user.email,
            email_verified=user.email_verified,
            active=user.is_active,
            has_password=user.password_hash is not None,
            created_at=user.created_at,
            password_changed_at=user.password_changed_at,
        )


class AccountList(Schema):
    accounts: list[Account]


class CreateAccount(Schema):
    """`password` for an account that can log in at once; or `invite: true` for one with no
    password, whose address is mailed a link to choose one (CHASER_AUTH_INVITATION_TTL)."""

    email: str
    password: str | None = None
    invite: bool = False

    @model_validator(mode="after")
    def _one_way(self) -> CreateAccount:
        if (self.password is None) == (not self.invite):
            raise ValueError("give either a password or invite: true")
        return self


class AdminSession(Schema):
    """One live session of the account (never its token)."""

    id: uuid.UUID
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime


class AdminSessionList(Schema):
    sessions: list[AdminSession]


class EndedSessions(Schema):
    ended: int


class RecoveryLink(Schema):
    """A password-reset link to hand to the account's owner: single use, valid until
    `expires_at`; a newer link, or a reset the owner asks for, revokes it."""

    link: str
    expires_at: datetime


class DeadLetter(Schema):
    """An outbox message delivery gave up on (never its content or address)."""

    id: uuid.UUID
    kind: str
    user_id: uuid.UUID | None
    attempts: int
    created_at: datetime
    finished_at: datetime | None
    last_error: str | None

    @classmethod
    def of(cls, row: OutboxMessage) -> DeadLetter:
        return cls(
            id=row.id,
            kind=row.kind,
            user_id=row.user_id,
            attempts=row.attempts,
            created_at=row.created_at,
            finished_at=row.finished_at,
            last_error=row.last_error,
        )


class DeadLetterList(Schema):
    dead_letters: list[DeadLetter]


# -- accounts -----------------------------------------------------------------------------------


@router.post(
    "/accounts",
    operation_id="admin-create-account",
    summary="Create an account, with a password or as an invitation",
    status_code=201,
    response_model=Account,
    responses={
        409: {"model": ErrorResponse, "description": "An account has this address"},
    },
)
async def create_account(body: CreateAccount, request: Request, runtime: RuntimeDep) -> Account:
    if body.password is not None:
        user = await runtime.admin.create_account(body.email, body.password, key=_key(request))
    else:
        user = await runtime.admin.invite(body.email, key=_key(request))
        runtime.wake.set()  # the invitation mail, at once when the worker is in this process
    request.state.account_id = user.id
    return Account.of(user)


@router.get(
    "/accounts",
    operation_id="admin-list-accounts",
    summary="Find an account by address, or list accounts (oldest first)",
    response_model=AccountList,
)
async def list_accounts(
    runtime: RuntimeDep,
    email: Annotated[str | None, Query(description="only the account with this address")] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AccountList:
    if email is not None:
        try:
            found = [await runtime.admin.account(email)]
        except ChaserError as exc:
            if exc.status != 404:
                raise
            found = []
        return AccountList(accounts=[Account.of(user) for user in found])
    users = await runtime.admin.listing(offset=offset, limit=limit)
    return AccountList(accounts=[Account.of(user) for user in users])


@router.get(
    "/accounts/{account_id}",
    operation_id="admin-get-account",
    summary="Read an account",
    response_model=Account,
    responses=NOT_FOUND,
)
async def get_account(account_id: uuid.UUID, runtime: RuntimeDep) -> Account:
    return Account.of(await runtime.admin.account(account_id))


@router.post(
    "/accounts/{account_id}/disable",
    operation_id="admin-disable-account",
    summary="Disable an account: no login, no reset mail; its sessions and links end",
    response_model=Account,
    responses=NOT_FOUND,
)
async def disable_account(account_id: uuid.UUID, request: Request, runtime: RuntimeDep) -> Account:
    return Account.of(await runtime.admin.set_active(account_id, False, key=_key(request)))


@router.post(
    "/accounts/{account_id}/enable",
    operation_id="admin-enable-account",
    summary="Enable a disabled account again",
    response_model=Account,
    responses=NOT_FOUND,
)
async def enable_account(account_id: uuid.UUID, request: Request, runtime: RuntimeDep) -> Account:
    return Account.of(await runtime.admin.set_active(account_id, True, key=_key(request)))


@router.delete(
    "/accounts/{account_id}",
    operation_id="admin-delete-account",
    summary="Delete an account with its sessions and links",
    status_code=204,
    response_class=Response,
    responses=NOT_FOUND,
)
async def delete_account(account_id: uuid.UUID, request: Request, runtime: RuntimeDep) -> Response:
    await runtime.admin.delete(account_id, key=_key(request))
    return Response(status_code=204)


# -- sessions -----------------------------------------------------------------------------------


@router.get(
    "/accounts/{account_id}/sessions",
    operation_id="admin-list-sessions",
    summary="The account's live sessions, most recently used first",
    response_model=AdminSessionList,
    responses=NOT_FOUND,
)
async def list_sessions(account_id: uuid.UUID, runtime: RuntimeDep) -> AdminSessionList:
    rows = await runtime.admin.sessions_of(account_id)
    return AdminSessionList(
        sessions=[
            AdminSession(
                id=row.id,
                created_at=row.created_at,
                last_seen_at=row.last_seen_at,
                expires_at=row.expires_at,
            )
            for row in rows
        ]
    )


@router.delete(
    "/accounts/{account_id}/sessions",
    operation_id="admin-end-sessions",
    summary="End every session of the account",
    response_model=EndedSessions,
    responses=NOT_FOUND,
)
async def end_sessions(
    account_id: uuid.UUID, request: Request, runtime: RuntimeDep
) -> EndedSessions:
    return EndedSessions(ended=await runtime.admin.end_sessions(account_id, key=_key(request)))


@router.delete(
    "/accounts/{account_id}/sessions/{session_id}",
    operation_id="admin-end-session",
    summary="End one live session of the account",
    status_code=204,
    response_class=Response,
    responses={404: {"model": ErrorResponse, "description": "No such account or session"}},
)
async def end_session(
    account_id: uuid.UUID, session_id: uuid.UUID, request: Request, runtime: RuntimeDep
) -> Response:
    await runtime.admin.end_session(account_id, session_id, key=_key(request))
    return Response(status_code=204)


# -- recovery -----------------------------------------------------------------------------------


@router.post(
    "/accounts/{account_id}/recovery-link",
    operation_id="admin-recovery-link",
    summary="Issue a password-reset link for support staff to hand over",
    status_code=201,
    response_model=RecoveryLink,
    responses={
        **NOT_FOUND,
        409: {"model": ErrorResponse, "description": "The account is disabled"},
    },
)
async def recovery_link(
    account_id: uuid.UUID, request: Request, runtime: RuntimeDep
) -> RecoveryLink:
    issued = await runtime.admin.recovery_link(account_id, key=_key(request))
    return RecoveryLink(link=issued.link, expires_at=issued.expires_at)


# -- dead letters -------------------------------------------------------------------------------


@router.get(
    "/dead-letters",
    operation_id="admin-list-dead-letters",
    summary="Outbox messages delivery gave up on, oldest first",
    response_model=DeadLetterList,
)
async def dead_letters(runtime: RuntimeDep) -> DeadLetterList:
    rows = await runtime.admin.dead_letters()
    return DeadLetterList(dead_letters=[DeadLetter.of(row) for row in rows])


@router.post(
    "/dead-letters/{message_id}/retry",
    operation_id="admin-retry-dead-letter",
    summary="Queue a dead letter for delivery again, due now",
    status_code=202,
    response_class=Response,
    responses={
        202: {"description": "Queued again"},
        404: {"model": ErrorResponse, "description": "No dead letter has this id"},
    },
)
async def retry_dead_letter(
    message_id: uuid.UUID, request: Request, runtime: RuntimeDep
) -> Response:
    await runtime.admin.retry_dead_letter(message_id, key=_key(request))
    runtime.wake.set()
    return Response(status_code=202)
