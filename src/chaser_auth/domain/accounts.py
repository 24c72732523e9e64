"""Accounts: creating one (operator CLI) and logging in."""

from __future__ import annotations

import uuid
from datetime import datetime

from chaser_auth.domain.addresses import address_key, stored_form
from chaser_auth.domain.clock import Clock
from chaser_auth.domain.passwords import PasswordHasher, PasswordPolicy
from chaser_auth.domain.sessions import AuthResult, SessionService
from chaser_auth.errors import ChaserError, InvalidCredentials
from chaser_auth.store.repositories import Store
from chaser_auth.store.tables import User


class InvalidAddress(ChaserError):
    status = 422
    code = "invalid_email"
    message = "This is not a valid email address."


class AccountExists(ChaserError):
    status = 409
    code = "account_exists"
    message = "An account with this email address already exists."


class AccountService:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        policy: PasswordPolicy,
        hasher: PasswordHasher,
        sessions: SessionService,
    ) -> None:
        self.store = store
        self.clock = clock
        self.policy = policy
        self.hasher = hasher
        self.sessions = sessions

    async def create(self, email: str, password: str, *, verified: bool = True) -> User:
        key = address_key(email)
        if key is None:
            raise InvalidAddress()
        address = stored_form(email)
        self.policy.check(password, address)
        password_hash = await self.hasher.hash(password)
        now = self.clock()
        async with self.store.tx() as tx:
            if await tx.users.by_key(key) is not None:
                raise AccountExists()
            user = User(
                id=uuid.uuid4(),
                email=address,
                email_key=key,
                password_hash=password_hash,
                is_active=True,
                email_verified=verified,
                created_at=now,
                password_changed_at=now,
            )
            await tx.users.add(user)
            await tx.audit.record("account_created", now, user_id=user.id)
        return user

    async def login(self, email: str, password: str) -> AuthResult:
        """Unknown address, inactive or unverified account and wrong password all cost one
        argon2 verification and end in the same error (no enumeration by body or timing)."""
        key = address_key(email)
        async with self.store.tx() as tx:
            user = await tx.users.by_key(key) if key else None
        stored = user.password_hash if user is not None else None
        ok = await self.hasher.verify(stored, password)
        if (
            not ok
            or user is None
            or stored is None
            or not user.is_active
            or not user.email_verified
        ):
            raise InvalidCredentials()
        # Cost settings changed since this hash was made: upgrade it transparently.
        rehashed = await self.hasher.hash(password) if self.hasher.needs_rehash(stored) else None
        now: datetime = self.clock()
        async with self.store.tx() as tx:
            if rehashed is not None:
                await tx.users.replace_hash(user.id, rehashed)
            result = await self.sessions.open(tx, user, now)
            await tx.audit.record("login_succeeded", now, user_id=user.id)
        return result
