"""What an operator may do to accounts and to the outbox — from the command line on the server
(`chaser-auth users`, `chaser-auth outbox`) or from the admin API on the operator listener
(`api/admin.py`). Both call these functions, so an action means the same from either.

Each action takes `key`: the name of the admin key the API call came with, recorded in the audit
event of the action (`admin_key` in its detail); None for the command line, whose operator is
whoever holds the server. The API also records every call it answers (`record_call`,
`record_refused`), whatever the answer.

Admin keys (`AdminKeys`): a key is a random string handed to a caller; the configuration holds
only its SHA-256 digest under a name (`CHASER_AUTH_ADMIN_KEYS`). A presented key is hashed and
compared with every configured digest in constant time (`hmac.compare_digest`, no early exit),
so neither the answer nor its timing tells how much of a guess was right, or which name it was
close to. The keys are 256-bit random strings, so a plain SHA-256 suffices: a slow password
hash protects guessable secrets, and nothing here is guessable.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from chaser_auth.domain.accounts import AccountService
from chaser_auth.domain.clock import Clock
from chaser_auth.domain.housekeeping import Housekeeping
from chaser_auth.domain.recovery import RecoveryService
from chaser_auth.domain.sessions import SessionService
from chaser_auth.errors import NotFound
from chaser_auth.store.repositories import DEAD
from chaser_auth.store.tables import OutboxMessage, Session, User
from chaser_auth.store.transactions import Store

KEY_PREFIX = "chak_"  # "chaser-auth admin key": recognisable to a secret scanner


def new_admin_key() -> str:
    """A new admin key: 256 random bits, URL-safe, with a recognisable prefix."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    """What the configuration holds for `key`: its SHA-256, in hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class AdminKeys:
    """The configured admin keys, by name, as digests."""

    def __init__(self, digests: Mapping[str, str]) -> None:
        self._digests = [(name, bytes.fromhex(digest)) for name, digest in digests.items()]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def identify(self, presented: str | None) -> str | None:
        """The name of the key `presented` is, or None. Every digest is compared, each in
        constant time, whether or not an earlier one matched."""
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode("utf-8")).digest()
        found: str | None = None
        for name, expected in self._digests:
            if hmac.compare_digest(digest, expected):
                found = name
        return found


@dataclass(frozen=True)
class IssuedLink:
    link: str
    expires_at: datetime


class AdminService:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        accounts: AccountService,
        sessions: SessionService,
        recovery: RecoveryService,
        housekeeping: Housekeeping,
    ) -> None:
        self.store = store
        self.clock = clock
        self.accounts = accounts
        self.sessions = sessions
        self.recovery = recovery
        self.housekeeping = housekeeping

    # -- accounts -----------------------------------------------------------------------------

    async def create_account(self, email: str, password: str, *, key: str | None) -> User:
        """An active, verified account with this password (the password policy applies)."""
        return await self.accounts.create(email, password, by=key)

    async def invite(self, email: str, *, key: str | None) -> User:
        """An active account with no password; the worker mails it a set-password link."""
        return await self.accounts.invite(email, by=key)

    async def account(self, account: str | uuid.UUID) -> User:
        """The account with this address or id; NotFound otherwise."""
        return await self.accounts.resolve(account)

    async def listing(self, *, offset: int = 0, limit: int | None = None) -> list[User]:
        return await self.accounts.listing(offset=offset, limit=limit)

    async def set_active(self, account: str | uuid.UUID, active: bool, *, key: str | None) -> User:
        return await self.accounts.set_active(account, active, by=key)

    async def delete(self, account: str | uuid.UUID, *, key: str | None) -> User:
        return await self.accounts.delete(account, by=key)

    # -- sessions -----------------------------------------------------------------------------

    async def sessions_of(self, account: str | uuid.UUID) -> list[Session]:
        """The account's live sessions, most recently used first."""
        return await self.sessions.live(await self.accounts.resolve(account))

    async def end_sessions(self, account: str | uuid.UUID, *, key: str | None) -> int:
        """End every session of the account; how many."""
        return await self.sessions.end_all(await self.accounts.resolve(account), by=key)

    async def end_session(
        self, account: str | uuid.UUID, session_id: uuid.UUID, *, key: str | None
    ) -> None:
        """End one live session of the account; NotFound if it has no such live session."""
        user = await self.accounts.resolve(account)
        await self.sessions.end(user, session_id, by=key)

    # -- recovery -----------------------------------------------------------------------------

    async def recovery_link(self, account: str | uuid.UUID, *, key: str | None) -> IssuedLink:
        """A reset link for support staff to hand over (see `RecoveryService.operator_link`)."""
        user = await self.accounts.resolve(account)
        link, expires_at = await self.recovery.operator_link_expiring(user, by=key)
        return IssuedLink(link, expires_at)

    # -- the outbox ---------------------------------------------------------------------------

    async def outbox(self, status: str | None = None) -> Sequence[OutboxMessage]:
        return await self.housekeeping.outbox_rows(status)

    async def dead_letters(self) -> Sequence[OutboxMessage]:
        return await self.housekeeping.outbox_rows(DEAD)

    async def retry_dead_letter(self, message_id: uuid.UUID, *, key: str | None) -> None:
        """Queue a dead letter for delivery again, due now; NotFound if there is no such one."""
        if not await self.housekeeping.retry_dead_letter(message_id):
            raise NotFound("No dead letter has this id.")
        now = self.clock()
        async with self.store.tx() as tx:
            await tx.audit.record(
                "dead_letter_retried",
                now,
                detail={"message": str(message_id), **({"admin_key": key} if key else {})},
            )

    # -- the admin API's own trail ------------------------------------------------------------

    async def record_call(
        self,
        key: str,
        operation: str,
        status: int,
        *,
        user_id: uuid.UUID | None = None,
        client: str | None = None,
    ) -> None:
        """One admin API call, answered with `status`: which key made it, and what it asked."""
        async with self.store.tx() as tx:
            await tx.audit.record(
                "admin_call",
                self.clock(),
                user_id=user_id,
                detail={"admin_key": key, "operation": operation, "status": status},
                client=client,
            )

    async def record_refused(self, operation: str, reason: str, *, client: str | None) -> None:
        """An admin API call refused before anything was done: no key, or no key we know."""
        async with self.store.tx() as tx:
            await tx.audit.record(
                "admin_refused",
                self.clock(),
                detail={"operation": operation, "reason": reason},
                client=client,
            )
