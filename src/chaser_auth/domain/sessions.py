"""Sessions: opaque bearer tokens (256 bits, only their digest stored) with an idle timeout and
an absolute lifetime (OWASP Session Management Cheat Sheet, "Session Expiration").

Revocation is a column checked on every request, so it takes effect on the very next one. So is
the credential a session was opened on: each session carries the account's credential version of
the moment its login (or reset, change, verification) checked the credential, and is accepted only
while the account still has that version. A password reset, change, disable or enable moves the
version on, so a session whose login verified the old password while the change was being made —
and that was stored after the change revoked every session — is refused all the same
(OWASP Session Management Cheat Sheet, "Renew the Session ID After Any Privilege Level Change";
OWASP ASVS 3.3.3 / 3.3.4).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from chaser_auth.domain import tokens
from chaser_auth.domain.clock import Clock
from chaser_auth.domain.devices import Device
from chaser_auth.domain.webhooks import NO_WEBHOOKS, SESSION_ENDED, Event, Webhooks
from chaser_auth.errors import NotAuthenticated, NotFound
from chaser_auth.store.tables import Session, User
from chaser_auth.store.transactions import Store, Tx

# last_seen_at is written at most this often, so a busy client does not write on every request;
# the idle timeout is therefore exact to within this margin.
TOUCH_INTERVAL = timedelta(seconds=60)


@dataclass(frozen=True)
class AuthResult:
    user_id: uuid.UUID
    email: str
    token: str
    expires_at: datetime  # the session's absolute end (its idle timeout may come sooner)


@dataclass(frozen=True)
class Authenticated:
    session: Session
    user: User


class SessionService:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        secret: bytes,
        idle_ttl: int,
        max_ttl: int,
        webhooks: Webhooks = NO_WEBHOOKS,
    ) -> None:
        self.webhooks = webhooks
        self.store = store
        self.clock = clock
        self.secret = secret
        self.idle = timedelta(seconds=idle_ttl)
        self.max = timedelta(seconds=max_ttl)

    async def open(
        self, tx: Tx, user: User, now: datetime, *, version: int, device: Device | None = None
    ) -> AuthResult:
        """Start a session inside the caller's transaction (so it exists iff the change does),
        on credential `version`: the account's version as the caller's transaction read or
        wrote it, with the row locked (`Users.lock`, `Users.set_password`). `device`: the
        browser or client it was opened from, and its network (`devices`)."""
        token = tokens.new_token()
        expires_at = now + self.max
        await tx.sessions.add(
            Session(
                id=uuid.uuid4(),
                user_id=user.id,
                token_digest=tokens.digest(self.secret, token),
                created_at=now,
                last_seen_at=now,
                expires_at=expires_at,
                credential_version=version,
                client_description=device.description if device else None,
                client_place=device.place if device else None,
            )
        )
        return AuthResult(user_id=user.id, email=user.email, token=token, expires_at=expires_at)

    async def authenticate(self, token: str | None, *, place: str | None = None) -> Authenticated:
        """The live session behind `token` (NotAuthenticated otherwise), recorded as used now
        from `place` (a network, `devices.coarsen`): written at most every TOUCH_INTERVAL, or
        at once when the place changed."""
        if not token or not tokens.is_well_formed(token):
            raise NotAuthenticated()
        now = self.clock()
        async with self.store.tx() as tx:
            session = await tx.sessions.by_digest(tokens.digest(self.secret, token))
            if session is None or not self._alive(session, now):
                raise NotAuthenticated()
            user = await tx.users.get(session.user_id)
            if user is None or not self._current(session, user):
                raise NotAuthenticated()
            moved = place is not None and place != session.client_place
            if moved or now - session.last_seen_at >= TOUCH_INTERVAL:
                await tx.sessions.touch(session.id, now, place)
        return Authenticated(session=session, user=user)

    @staticmethod
    def _current(session: Session, user: User) -> bool:
        """The account may still act, on the credential this session was opened on."""
        return user.is_active and session.credential_version == user.credential_version

    def _alive(self, session: Session, now: datetime) -> bool:
        return (
            session.revoked_at is None
            and now <= session.expires_at
            and now <= session.last_seen_at + self.idle
        )

    async def revoke(self, session: Session) -> None:
        """Logout: end this session (a `session.ended` event if this call ended it)."""
        now = self.clock()
        async with self.store.tx() as tx:
            if self.webhooks:  # the account first, as every change takes it (`emit`)
                await tx.users.lock(session.user_id)
            if await tx.sessions.revoke(session.id, now):
                await self.webhooks.emit(tx, now, [ended(session.user_id, session.id, "user")])

    async def live(self, user: User) -> list[Session]:
        """The account's sessions that would still be accepted, most recently used first."""
        now = self.clock()
        async with self.store.tx() as tx:
            rows = await tx.sessions.open_for(user, now)
        return [row for row in rows if self._alive(row, now)]

    async def end_all(self, user: User, *, by: str | None = None) -> int:
        """End every session of the account (an operator's action: `by` names the admin key
        that asked, None for the command line); how many were live."""
        now = self.clock()
        async with self.store.tx() as tx:
            await tx.users.lock(user.id)  # no login opens a session meanwhile
            ids = await tx.sessions.revoke_each(user.id, now)
            revoked = len(ids)
            await self.webhooks.emit(
                tx, now, [ended(user.id, session_id, "operator") for session_id in ids]
            )
            detail: dict[str, object] = {"sessions_revoked": revoked}
            if by is not None:
                detail["admin_key"] = by
            await tx.audit.record("sessions_ended_by_operator", now, user_id=user.id, detail=detail)
        return revoked

    async def end(
        self,
        user: User,
        session_id: uuid.UUID,
        *,
        client: str | None = None,
        by: str | None = None,
    ) -> None:
        """End one of the account's own sessions; another account's, or an ended one, is
        NotFound — the same answer as an id that never existed. `by`: the admin key of an
        operator who ended it for the account."""
        now = self.clock()
        async with self.store.tx() as tx:
            if self.webhooks:  # the account first, as every change takes it (`emit`)
                await tx.users.lock(user.id)
            row = await tx.sessions.get(session_id)
            live = (
                row is not None
                and row.user_id == user.id
                and self._current(row, user)
                and self._alive(row, now)
            )
            if live and await tx.sessions.revoke(session_id, now):
                detail = {"admin_key": by} if by is not None else None
                who = "operator" if by is not None else "user"
                await self.webhooks.emit(tx, now, [ended(user.id, session_id, who)])
                await tx.audit.record(
                    "session_ended", now, user_id=user.id, client=client, detail=detail
                )
            else:
                live = False
        if not live:
            raise NotFound("No such session.")


def ended(user_id: uuid.UUID, session_id: uuid.UUID, by: str) -> Event:
    """The `session.ended` event: `by` is "user" (logout, or the account ending one of its
    sessions) or "operator" (the CLI or the admin API)."""
    return Event(SESSION_ENDED, user_id, {"session_id": str(session_id), "by": by})
