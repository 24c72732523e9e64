"""Accounts: creating one (operator CLI and admin API, with a password or as an invitation),
logging in, changing the password, and the operator's disable / enable / delete.

Operator actions take `by`: the name of the admin key that asked (`domain.admin`), recorded in
the audit event's detail as `admin_key`; None for the command line on the server."""

from __future__ import annotations

import uuid
from datetime import datetime

from chaser_auth.domain.addresses import address_key, stored_form
from chaser_auth.domain.clock import Clock
from chaser_auth.domain.devices import Device
from chaser_auth.domain.outbox import INVITATION, NEW_SIGN_IN, PASSWORD_CHANGED, device_payload
from chaser_auth.domain.passwords import PasswordHasher, PasswordPolicy
from chaser_auth.domain.sessions import AuthResult, SessionService
from chaser_auth.domain.webhooks import (
    ACCOUNT_CREATED,
    ACCOUNT_DELETED,
    ACCOUNT_DISABLED,
    ACCOUNT_ENABLED,
    NO_WEBHOOKS,
    Event,
    Webhooks,
)
from chaser_auth.domain.webhooks import PASSWORD_CHANGED as PASSWORD_CHANGED_EVENT
from chaser_auth.errors import (
    AccountExists,
    IncorrectPassword,
    InvalidAddress,
    InvalidCredentials,
    NotAuthenticated,
    NotFound,
)
from chaser_auth.store.tables import User
from chaser_auth.store.transactions import Store


def new_user(
    raw_email: str,
    key: str,
    password_hash: str | None,
    now: datetime,
    *,
    verified: bool,
    locale: str | None = None,
) -> User:
    """A new, active account for an address that `address_key` accepted (as `key`), its mail
    in `locale` (None: the default language); with no password hash (an invitation), no
    password works until one is set through a link."""
    return User(
        id=uuid.uuid4(),
        email=stored_form(raw_email),
        email_key=key,
        password_hash=password_hash,
        is_active=True,
        email_verified=verified,
        created_at=now,
        password_changed_at=now if password_hash is not None else None,
        locale=locale,
    )


def created(user: User, via: str) -> Event:
    """The `account.created` event: `via` is "sign_up", "operator" (with a password) or
    "invitation"."""
    return Event(
        ACCOUNT_CREATED,
        user.id,
        {"email": user.email, "email_verified": user.email_verified, "via": via},
    )


def by_key(key: str | None) -> dict[str, str] | None:
    """The audit detail naming the admin key an operator action came with (None: the CLI)."""
    return {"admin_key": key} if key is not None else None


def with_key(detail: dict[str, object], key: str | None) -> dict[str, object]:
    return {**detail, "admin_key": key} if key is not None else detail


class AccountService:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        policy: PasswordPolicy,
        hasher: PasswordHasher,
        sessions: SessionService,
        notify_new_sign_in: bool = False,
        webhooks: Webhooks = NO_WEBHOOKS,
    ) -> None:
        self.notify_new_sign_in = notify_new_sign_in
        self.webhooks = webhooks
        self.store = store
        self.clock = clock
        self.policy = policy
        self.hasher = hasher
        self.sessions = sessions

    async def create(
        self, email: str, password: str, *, verified: bool = True, by: str | None = None
    ) -> User:
        key = address_key(email)
        if key is None:
            raise InvalidAddress()
        self.policy.check(password, stored_form(email))
        password_hash = await self.hasher.hash(password)
        now = self.clock()
        async with self.store.tx() as tx:
            if await tx.users.by_key(key) is not None:
                raise AccountExists()
            user = new_user(email, key, password_hash, now, verified=verified)
            await tx.users.add(user)
            await self.webhooks.emit(tx, now, [created(user, "operator")])
            await tx.audit.record("account_created", now, user_id=user.id, detail=by_key(by))
        return user

    async def invite(self, email: str, *, by: str | None = None) -> User:
        """An active account with no password, and an invitation queued in the same
        transaction: the worker mails it a set-password link (`RecoveryService.
        prepare_invitation`), valid for CHASER_AUTH_INVITATION_TTL. The operator vouches for
        the address, as for `create`, so the account counts as verified; until a password is
        set through that link (or a reset link) no login succeeds."""
        key = address_key(email)
        if key is None:
            raise InvalidAddress()
        now = self.clock()
        async with self.store.tx() as tx:
            if await tx.users.by_key(key) is not None:
                raise AccountExists()
            user = new_user(email, key, None, now, verified=True)
            await tx.users.add(user)
            await self.webhooks.emit(tx, now, [created(user, "invitation")])
            await tx.outbox.enqueue(INVITATION, now, user_id=user.id)
            await tx.audit.record("account_invited", now, user_id=user.id, detail=by_key(by))
        return user

    async def login(
        self,
        email: str,
        password: str,
        *,
        client: str | None = None,
        device: Device | None = None,
    ) -> AuthResult:
        """Unknown address, inactive or unverified account and wrong password all cost one
        argon2 verification and end in the same error (no enumeration by body or timing).

        The hash is verified outside any transaction (it takes tens to hundreds of ms); the
        session is then opened only if the account, locked, still has the credential version
        that was verified — a reset, password change or disable that committed meanwhile makes
        this login fail instead of opening a session on the old password."""
        key = address_key(email)
        async with self.store.tx() as tx:
            user = await tx.users.by_key(key) if key else None
        stored = user.password_hash if user is not None else None
        ok = await self.hasher.verify(stored, password)
        if not ok or user is None or stored is None or not self._may_log_in(user):
            raise InvalidCredentials()
        # Cost settings changed since this hash was made: upgrade it transparently.
        rehashed = await self.hasher.hash(password) if self.hasher.needs_rehash(stored) else None
        now: datetime = self.clock()
        async with self.store.tx() as tx:
            current = await tx.users.lock(user.id)
            if (
                current is None
                or current.credential_version != user.credential_version
                or not self._may_log_in(current)
            ):
                raise InvalidCredentials()
            if rehashed is not None:
                await tx.users.replace_hash(user.id, rehashed)
            result = await self.sessions.open(
                tx, current, now, version=current.credential_version, device=device
            )
            if self.notify_new_sign_in:
                await tx.outbox.enqueue(
                    NEW_SIGN_IN, now, user_id=user.id, payload=device_payload(device)
                )
            await tx.audit.record("login_succeeded", now, user_id=user.id, client=client)
        return result

    @staticmethod
    def _may_log_in(user: User) -> bool:
        return user.is_active and user.email_verified

    async def change_password(
        self,
        user: User,
        current: str,
        new: str,
        *,
        client: str | None = None,
        device: Device | None = None,
    ) -> AuthResult:
        """Current password required; then a new session, every other one revoked, and the
        changed-password notice queued — as after a reset. Outstanding reset links stay
        usable: the mailbox outranks the password.

        `user` is the account as the caller's session saw it. The new password is written only
        if the account still has that credential version (compare-and-set): a reset or another
        change that committed while this one hashed wins, and this one ends NotAuthenticated —
        the session it came with was ended by that change."""
        if not await self.hasher.verify(user.password_hash, current):
            raise IncorrectPassword()
        self.policy.check(new, user.email)
        password_hash = await self.hasher.hash(new)
        now = self.clock()
        async with self.store.tx() as tx:
            version = await tx.users.set_password(
                user.id, password_hash, now, expected_version=user.credential_version
            )
            if version is None:
                raise NotAuthenticated()
            # Reset links stay: whoever knows the password (perhaps a thief) must not be able
            # to cancel the mailbox owner's way back in; a reset overrides this change.
            await tx.verify_tokens.revoke_all(user.id, now)
            revoked = await tx.sessions.revoke_all(user.id, now)
            result = await self.sessions.open(tx, user, now, version=version, device=device)
            await tx.outbox.enqueue(
                PASSWORD_CHANGED, now, user_id=user.id, payload=device_payload(device)
            )
            await self.webhooks.emit(
                tx,
                now,
                [Event(PASSWORD_CHANGED_EVENT, user.id, {"other_sessions_ended": revoked})],
            )
            await tx.audit.record(
                "password_changed",
                now,
                user_id=user.id,
                detail={"sessions_revoked": revoked},
                client=client,
            )
        return result

    # -- operator -----------------------------------------------------------------------------

    async def find(self, email: str) -> User:
        key = address_key(email)
        async with self.store.tx() as tx:
            user = await tx.users.by_key(key) if key else None
        if user is None:
            raise NotFound("No account has this email address.")
        return user

    async def get(self, user_id: uuid.UUID) -> User:
        async with self.store.tx() as tx:
            user = await tx.users.get(user_id)
        if user is None:
            raise NotFound("No account has this id.")
        return user

    async def resolve(self, account: str | uuid.UUID) -> User:
        """The account named by its address (`find`) or its id (`get`)."""
        return await (self.get(account) if isinstance(account, uuid.UUID) else self.find(account))

    async def listing(self, *, offset: int = 0, limit: int | None = None) -> list[User]:
        """Accounts, oldest first; `limit` of them from `offset` (all if None)."""
        async with self.store.tx() as tx:
            return list(await tx.users.listing(offset=offset, limit=limit))

    async def set_active(
        self, account: str | uuid.UUID, active: bool, *, by: str | None = None
    ) -> User:
        """Disabling also ends every session and kills every outstanding link at once. The
        account as it is afterwards."""
        user = await self.resolve(account)
        now = self.clock()
        async with self.store.tx() as tx:
            await tx.users.set_active(user.id, active)
            detail: dict[str, object] = {}
            if not active:
                detail = {
                    "sessions_revoked": await tx.sessions.revoke_all(user.id, now),
                    "links_revoked": await tx.reset_tokens.revoke_all(user.id, now)
                    + await tx.verify_tokens.revoke_all(user.id, now),
                }
            event = "account_enabled" if active else "account_disabled"
            facts = {"sessions_ended": detail["sessions_revoked"]} if not active else {}
            await self.webhooks.emit(
                tx, now, [Event(ACCOUNT_ENABLED if active else ACCOUNT_DISABLED, user.id, facts)]
            )
            await tx.audit.record(event, now, user_id=user.id, detail=with_key(detail, by) or None)
            changed = await tx.users.get(user.id)
        return changed or user

    async def delete(self, account: str | uuid.UUID, *, by: str | None = None) -> User:
        """The account, its sessions and its links go (foreign keys cascade); the audit trail
        keeps the account's id, never its address."""
        user = await self.resolve(account)
        now = self.clock()
        async with self.store.tx() as tx:
            await tx.users.delete(user.id)
            await self.webhooks.emit(tx, now, [Event(ACCOUNT_DELETED, user.id, {"by": "operator"})])
            await tx.audit.record("account_deleted", now, user_id=user.id, detail=by_key(by))
        return user
