"""Moving an account to another address, and moving it back.

Request path (`request`): the current password is checked (a stolen session alone cannot move
the account), the new address must be an address; then one outbox row — nothing more, so the
answer is the same whether or not the new address already has an account. The worker
(`prepare_request`) decides: an address free of any account gets a confirmation link; one that
has an account gets nothing (its owner learns nothing from a stranger's try, and the requester
nothing from the answer).

Confirming (`confirm`, the link's token): the account moves to the new address, verified; every
session ends but the one this opens; every reset, verification and other change link dies — they
were sent to the old address; and the old address gets a notice with an undo link, alive for
`ttl`. Undoing (`undo`): the account moves back, every session and link ends again, and the
owner is told to reset the password (whoever moved the account knew it).

Both links follow the rules of every link (`links`, `tokens`): derived from their outbox row,
only a digest stored, single use, the newest only.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from chaser_auth import metrics
from chaser_auth.domain import tokens
from chaser_auth.domain.addresses import address_key, stored_form
from chaser_auth.domain.clock import Clock
from chaser_auth.domain.devices import Device
from chaser_auth.domain.links import Links
from chaser_auth.domain.outbox import EMAIL_CHANGE, EMAIL_CHANGED, AddressLimit, Letter, Skip
from chaser_auth.domain.passwords import PasswordHasher
from chaser_auth.domain.sessions import AuthResult, SessionService
from chaser_auth.errors import IncorrectPassword, InvalidAddress, InvalidToken
from chaser_auth.store.repositories import Job, new_outbox_row
from chaser_auth.store.tables import EmailChangeToken, EmailUndoToken, User
from chaser_auth.store.transactions import Store, Tx

CHANGE_PURPOSE = "email-change"
UNDO_PURPOSE = "email-undo"


class AddressChangeService:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        secret: bytes,
        ttl: int,
        public_url: str,
        hasher: PasswordHasher,
        sessions: SessionService,
    ) -> None:
        self.store = store
        self.clock = clock
        self.secret = secret
        self.public_url = public_url
        self.hasher = hasher
        self.sessions = sessions
        self.changes: Links[EmailChangeToken] = Links(
            store=store,
            secret=secret,
            purpose=CHANGE_PURPOSE,
            ttl=timedelta(seconds=ttl),
            page=f"{public_url}/change-email",
            table=lambda tx: tx.email_change_tokens,
        )
        self.undos: Links[EmailUndoToken] = Links(
            store=store,
            secret=secret,
            purpose=UNDO_PURPOSE,
            ttl=timedelta(seconds=ttl),
            page=f"{public_url}/undo-email-change",
            table=lambda tx: tx.email_undo_tokens,
        )

    # -- request path -------------------------------------------------------------------------

    async def request(
        self, user: User, current: str, new_email: str, *, client: str | None = None
    ) -> None:
        if not await self.hasher.verify(user.password_hash, current):
            raise IncorrectPassword()
        if address_key(new_email) is None:
            raise InvalidAddress()
        now = self.clock()
        async with self.store.tx() as tx:
            await tx.outbox.enqueue(
                EMAIL_CHANGE, now, user_id=user.id, payload={"email": new_email, "client": client}
            )
            await tx.audit.record("email_change_requested", now, user_id=user.id, client=client)

    # -- worker -------------------------------------------------------------------------------

    async def prepare_request(self, job: Job, limit: AddressLimit) -> Letter | Skip:
        now = self.clock()
        async with self.store.tx() as tx:
            user = await tx.users.get(job.user_id) if job.user_id else None
            sent = await tx.email_change_tokens.by_outbox(job.id)
        if user is None or not user.is_active:
            return Skip("no_account")
        if sent is not None:  # a retried send: the same link, if it still works
            if not Links.usable(sent, now) or sent.new_email is None:
                return Skip("stale")
            return self._change_letter(user, sent.new_email, self.changes.token_of(job.id))
        raw = str((job.payload or {}).get("email", ""))
        key = address_key(raw)
        if key is None:
            return Skip("invalid")
        if key == user.email_key:
            return Skip("same_address")
        if not (await limit.allow_many([tokens.keyed_hash(self.secret, key)]))[0]:
            return Skip("suppressed")
        new_email = stored_form(raw)
        async with self.store.tx() as tx:
            if await tx.users.by_key(key) is not None:
                await tx.audit.record("email_change_address_taken", now, user_id=user.id)
                return Skip("address_taken")
            [token] = await self.changes.issue(tx, [(user.id, job.id)], now)
            await tx.email_change_tokens.annotate(job.id, new_email=new_email)
        return self._change_letter(user, new_email, token)

    def _change_letter(self, user: User, new_email: str, token: str) -> Letter:
        return Letter(
            "email_change",
            new_email,
            {
                "link": self.changes.url(token),
                "ttl_hours": self._ttl_hours(),
                "ttl": self.changes.ttl,
            },
            locale=user.locale,  # the account's mail, though it goes to the new address
        )

    async def prepare_changed_notice(self, job: Job) -> Letter | Skip:
        async with self.store.tx() as tx:
            row = await tx.email_undo_tokens.by_outbox(job.id)
            user = await tx.users.get(job.user_id) if job.user_id else None
        if row is None or user is None or row.old_email is None:
            return Skip("no_account")
        if not Links.usable(row, self.clock()):
            return Skip("stale")
        return Letter(
            "email_changed",
            row.old_email,
            {
                "new_email": user.email,
                "undo_link": self.undos.url(self.undos.token_of(job.id)),
                "ttl_hours": self._ttl_hours(),
                "ttl": self.undos.ttl,
                "forgot_link": f"{self.public_url}/forgot-password",
            },
            locale=user.locale,
        )

    def _ttl_hours(self) -> int:
        return max(1, int(self.changes.ttl.total_seconds() // 3600))

    # -- the links ----------------------------------------------------------------------------

    async def confirm(
        self, token: str, *, client: str | None = None, device: Device | None = None
    ) -> AuthResult:
        """Move the account to the link's address; a new session. InvalidToken otherwise —
        also when the address has meanwhile become another account's."""
        try:
            result = await self._confirm(token, client, device)
        except InvalidToken as exc:
            metrics.TOKENS.labels(CHANGE_PURPOSE, exc.reason).inc()
            raise
        metrics.TOKENS.labels(CHANGE_PURPOSE, "consumed").inc()
        return result

    async def _confirm(self, token: str, client: str | None, device: Device | None) -> AuthResult:
        if not tokens.is_well_formed(token):
            raise InvalidToken()
        now = self.clock()
        async with self.store.tx() as tx:
            row = await self.changes.find(tx, token)
            user = await tx.users.lock(row.user_id) if row is not None else None
            if row is None or user is None or not user.is_active or row.new_email is None:
                raise InvalidToken()
            key = address_key(row.new_email)
            taken = key is None or await tx.users.by_key(key) is not None
            if key is None or taken or not await tx.email_change_tokens.consume(row.id, now):
                expired = Links.expired(row, now)
                raise InvalidToken(reason="expired" if expired else "invalid")
            old_email = user.email
            await tx.users.change_email(user.id, row.new_email, key)
            await self._end_everything(tx, user, now)
            moved = await tx.users.lock(user.id)  # as changed: its new credential version
            if moved is None:
                raise InvalidToken()
            result = await self.sessions.open(
                tx, moved, now, version=moved.credential_version, device=device
            )
            notice = new_outbox_row(EMAIL_CHANGED, now, user_id=user.id)
            await tx.outbox.add_many([notice])
            await self.undos.issue(tx, [(user.id, notice["id"])], now)
            await tx.email_undo_tokens.annotate(notice["id"], old_email=old_email)
            await tx.audit.record("email_changed", now, user_id=user.id, client=client)
        return result

    async def undo(self, token: str, *, client: str | None = None) -> str:
        """Move the account back to the address the undo link was sent to; every session and
        link ends. The address, or InvalidToken — also when it is another account's by now."""
        if not tokens.is_well_formed(token):
            raise InvalidToken()
        now = self.clock()
        async with self.store.tx() as tx:
            row = await self.undos.find(tx, token)
            user = await tx.users.lock(row.user_id) if row is not None else None
            if row is None or user is None or not user.is_active or row.old_email is None:
                raise InvalidToken()
            key = address_key(row.old_email)
            holder = await tx.users.by_key(key) if key else None
            taken = holder is not None and holder.id != user.id
            if key is None or taken or not await tx.email_undo_tokens.consume(row.id, now):
                raise InvalidToken(reason="expired" if Links.expired(row, now) else "invalid")
            await tx.users.change_email(user.id, row.old_email, key)
            await self._end_everything(tx, user, now)
            await tx.email_undo_tokens.revoke_all(user.id, now)
            await tx.audit.record("email_change_undone", now, user_id=user.id, client=client)
        metrics.TOKENS.labels(UNDO_PURPOSE, "consumed").inc()
        return row.old_email

    @staticmethod
    async def _end_everything(tx: Tx, user: User, now: datetime) -> None:
        """Every session, and every link sent to an address the account had."""
        await tx.sessions.revoke_all(user.id, now)
        await tx.reset_tokens.revoke_all(user.id, now)
        await tx.verify_tokens.revoke_all(user.id, now)
        await tx.email_change_tokens.revoke_all(user.id, now)
