"""Password recovery: the rules, split between the two halves of the flow.

Request path (`request`): record what the client typed, durably, and nothing else. It must not
branch on whether an account exists — no look-up, no hashing, no mail — so that status, body,
headers and timing are the same for every address (OWASP Forgot Password Cheat Sheet,
"Return a consistent message for both existent and non-existent accounts"). Everything that
depends on the account happens in the delivery worker (`prepare_resets`).

Confirm path (`check`, `confirm`): see `tokens` for the numbered reasons a link stops working.

Code path (`exchange_code`): the one-time code mailed beside the link, with the address it was
sent to, gives the link's token (`links.Links.redeem_code`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from chaser_auth import metrics
from chaser_auth.domain import tokens
from chaser_auth.domain.addresses import address_key, stored_form
from chaser_auth.domain.clock import Clock
from chaser_auth.domain.devices import Device
from chaser_auth.domain.links import Grant, Links
from chaser_auth.domain.outbox import (
    PASSWORD_CHANGED,
    RESET_REQUEST,
    AddressLimit,
    Letter,
    Note,
    Skip,
    device_context,
    device_payload,
)
from chaser_auth.domain.passwords import PasswordHasher, PasswordPolicy
from chaser_auth.domain.sessions import AuthResult, SessionService
from chaser_auth.domain.webhooks import (
    NO_WEBHOOKS,
    PASSWORD_RESET,
    RESET_REQUESTED,
    Event,
    Webhooks,
    stamp,
)
from chaser_auth.errors import AccountDisabled, InvalidCode, InvalidToken
from chaser_auth.store.intake import Intake
from chaser_auth.store.repositories import Job
from chaser_auth.store.tables import ResetToken, User
from chaser_auth.store.transactions import Store, Tx

RESET_PURPOSE = "reset"
INVITE_PURPOSE = "invite"
MINT_CHUNK = 16  # links minted per transaction


def may_receive_reset(user: User | None) -> bool:
    """Who may get a reset link — the one place this is decided (cf. Django's
    `PasswordResetForm.get_users`): an account that exists and is active."""
    return user is not None and user.is_active


def requested_event(user: User, job: Job, *, issued: bool) -> Event:
    """The `account.password_reset_requested` event of a request matched to `user` (never of
    one that matched no account): when it was asked, and whether a link was issued for it (not
    for a disabled account, nor beyond the per-address mail limit while a link still works)."""
    return Event(
        RESET_REQUESTED,
        user.id,
        {"email": user.email, "requested_at": stamp(job.created_at), "link_issued": issued},
    )


class RecoveryService:
    def __init__(
        self,
        *,
        store: Store,
        intake: Intake,
        clock: Clock,
        secret: bytes,
        reset_ttl: int,
        public_url: str,
        policy: PasswordPolicy,
        hasher: PasswordHasher,
        sessions: SessionService,
        notify_unknown: bool,
        code_tries: int = 5,
        invitation_ttl: int = 7 * 86400,
        webhooks: Webhooks = NO_WEBHOOKS,
    ) -> None:
        self.webhooks = webhooks
        self.store = store
        self.intake = intake
        self.clock = clock
        self.secret = secret
        self.public_url = public_url
        self.links: Links[ResetToken] = Links(
            store=store,
            secret=secret,
            purpose=RESET_PURPOSE,
            ttl=timedelta(seconds=reset_ttl),
            page=f"{public_url}/reset-password",
            table=lambda tx: tx.reset_tokens,
        )
        # An invitation's set-password link is a reset link (the same table, page and
        # confirm) that lives longer, and whose token is derived under a purpose of its own.
        self.invitations: Links[ResetToken] = Links(
            store=store,
            secret=secret,
            purpose=INVITE_PURPOSE,
            ttl=timedelta(seconds=invitation_ttl),
            page=f"{public_url}/reset-password",
            table=lambda tx: tx.reset_tokens,
        )
        self.policy = policy
        self.hasher = hasher
        self.sessions = sessions
        self.notify_unknown = notify_unknown
        self.code_tries = code_tries

    # -- request path -------------------------------------------------------------------------

    async def request(self, raw_email: str, client: str, locale: str | None = None) -> None:
        """Record the request: what the client typed and the client's address (for the audit
        trail, so an operator can see who sent a flood); both leave the row once handled.
        `locale`, the request's language, is used only for a notice to an address without an
        account: an account's mail is in the account's language, whoever asks."""
        payload = {"email": raw_email, "client": client, "locale": locale}
        await self.intake.enqueue(RESET_REQUEST, self.clock(), payload)

    # -- worker -------------------------------------------------------------------------------

    async def prepare_resets(self, jobs: Sequence[Job], limit: AddressLimit) -> list[Letter | Skip]:
        """What each reset request in `jobs` becomes, in order, with a handful of statements
        for the whole batch (one account look-up, one limit call, one look-up of live links
        for the accounts over the limit, a transaction per `MINT_CHUNK` links minted) rather
        than some per row: under a flood most rows are for unknown or throttled addresses,
        and they must not cost a commit each. The limit's subject is a keyed hash of the
        address key (of the raw string if it has none)."""
        now = self.clock()
        plans: dict[uuid.UUID, Letter | Skip] = {}
        fresh: list[tuple[Job, str, str | None, str | None]] = []
        asked_in: dict[uuid.UUID, str | None] = {}
        for job in jobs:
            if job.user_id is not None:  # resolved on an earlier attempt: resend the same link
                plans[job.id] = await self._resend(job, now)
            else:
                payload = job.payload or {}
                raw, client = str(payload.get("email", "")), payload.get("client")
                asked_in[job.id] = str(payload["locale"]) if payload.get("locale") else None
                fresh.append((job, raw, address_key(raw), str(client) if client else None))
        async with self.store.tx() as tx:  # reads only: nothing to commit
            users = await tx.users.by_keys({key for _, _, key, _ in fresh if key})
        # The limit is asked outside any transaction: on SQLite an open write transaction
        # would hold the request path's inserts while Redis answers.
        asking: list[tuple[Job, str, User | None, Note]] = []
        for job, raw, key, client in fresh:
            user = users.get(key) if key else None
            subject = tokens.keyed_hash(self.secret, key or raw)
            requested = Note("reset_requested", user.id if user else None, subject, client)
            if not may_receive_reset(user) and not (self.notify_unknown and key and user is None):
                # A disabled account was asked for all the same: its application hears of it.
                events = (requested_event(user, job, issued=False),) if user else ()
                plans[job.id] = Skip("no_account", (requested,), events)
            else:
                asking.append((job, raw, user, requested))
        allowed = await limit.allow_many([note.subject or "" for *_, note in asking])
        minting: list[tuple[Job, User, tuple[Note, ...]]] = []
        over: list[tuple[Job, User, Note]] = []
        for (job, raw, user, requested), ok in zip(asking, allowed, strict=True):
            if user is None:  # unknown address, and the operator wants it told so
                plans[job.id] = (
                    Letter(
                        "reset_unknown",
                        stored_form(raw),
                        {"public_url": self.public_url},
                        (requested,),
                        locale=asked_in.get(job.id),
                    )
                    if ok
                    else Skip("suppressed", (requested,))
                )
            elif not ok:
                over.append((job, user, requested))
            else:
                minting.append((job, user, (requested,)))
        if over:
            # Over the per-address budget, but with no link that still works, the account gets
            # one anyway: else a stranger who spends the budget leaves the owner without a
            # working link for the rest of the window once those links expire. The inbox gets
            # at most one mail per link lifetime beyond the budget — none while a link lives
            # (one minted in this batch included). One query for the whole batch.
            async with self.store.tx() as tx:  # reads only
                live = await tx.reset_tokens.live_among({user.id for _, user, _ in over}, now)
            live |= {user.id for _, user, _ in minting}
            for job, user, requested in over:
                if user.id in live:
                    suppressed = Note(
                        "reset_suppressed", user.id, requested.subject, requested.client
                    )
                    plans[job.id] = Skip(
                        "suppressed",
                        (requested, suppressed),
                        (requested_event(user, job, issued=False),),
                    )
                else:
                    live.add(user.id)
                    beyond = Note(
                        "reset_beyond_limit", user.id, requested.subject, requested.client
                    )
                    minting.append((job, user, (requested, beyond)))
        if minting:
            # By account: two workers minting for the same accounts lock their token rows in
            # one order, so they cannot deadlock (PostgreSQL). Within an account, claim order
            # stays, so the newest request's link is the one that lives.
            minting.sort(key=lambda item: item[1].id)
            # A few dozen per transaction: on SQLite a long write transaction would hold every
            # request's group commit behind it.
            for start in range(0, len(minting), MINT_CHUNK):
                chunk = minting[start : start + MINT_CHUNK]
                async with self.store.tx() as tx:
                    # first: it locks the accounts, which come before their links
                    await self.webhooks.emit(
                        tx, now, [requested_event(user, job, issued=True) for job, user, _ in chunk]
                    )
                    links = await self._mint_many(
                        tx,
                        [Grant(user, job.id, notes) for job, user, notes in chunk],
                        now,
                        event="reset_token_issued",
                    )
                for (job, user, _), token in zip(chunk, links, strict=True):
                    plans[job.id] = self._reset_letter(user, token, job.id)
        return [plans[job.id] for job in jobs]

    async def _mint_many(
        self, tx: Tx, grants: Sequence[Grant], now: datetime, *, event: str
    ) -> list[str]:
        """`Links.issue` for reset links, each grant's audit notes followed by `event`."""
        links = await self.links.issue(tx, [(grant.user.id, grant.job_id) for grant in grants], now)
        events: list[dict[str, Any]] = []
        for grant in grants:
            events += [note.event_at(now) for note in grant.notes]
            events.append(Note(event, grant.user.id).event_at(now))
        await tx.audit.record_many(events)
        return links

    async def operator_link(self, user: User, *, by: str | None = None) -> str:
        """A reset link for support staff to hand over (`chaser-auth users reset-link`, the
        admin API): the same rules as a mailed one — digest stored, single use, TTL, older
        links revoked — and an audit event of its own, naming the admin key `by` if one asked.
        A disabled account gets none."""
        return (await self.operator_link_expiring(user, by=by))[0]

    async def operator_link_expiring(
        self, user: User, *, by: str | None = None
    ) -> tuple[str, datetime]:
        """`operator_link`, and when the link expires."""
        if not may_receive_reset(user):
            raise AccountDisabled("This account is disabled; enable it before issuing a link.")
        now = self.clock()
        async with self.store.tx() as tx:
            [token] = await self.links.issue(tx, [(user.id, None)], now)
            await tx.audit.record(
                "reset_link_issued_by_operator",
                now,
                user_id=user.id,
                detail={"admin_key": by} if by is not None else None,
            )
        return self.link(token), now + self.links.ttl

    async def prepare_invitation(self, job: Job) -> Letter | Skip:
        """The invitation mail of an account an operator created without a password: a
        set-password link derived from the row (a retried send carries the same link), valid
        for the invitation TTL. Nothing goes to an account deleted or disabled meanwhile, or
        whose password was set meanwhile (by a reset link); a retry whose link died sends
        nothing either. Not counted against the per-address mail limit: an operator asked."""
        now = self.clock()
        row, user = await self.invitations.sent_before(job)
        if user is None:
            return Skip("no_account")
        if row is not None:  # minted on an earlier attempt
            if not self._usable(row, user, now):
                return Skip("stale")
            token = self.invitations.token_of(job.id)
        elif not may_receive_reset(user):
            return Skip("account_disabled")
        elif user.password_hash is not None:
            return Skip("password_set")
        else:
            async with self.store.tx() as tx:
                [token] = await self.invitations.issue(tx, [(user.id, job.id)], now)
                await tx.audit.record("invitation_link_issued", now, user_id=user.id)
        return Letter(
            "invitation",
            user.email,
            {
                "link": self.link(token),
                "ttl_days": max(1, int(self.invitations.ttl.total_seconds() // 86400)),
                "ttl_hours": max(1, int(self.invitations.ttl.total_seconds() // 3600)),
                "ttl": self.invitations.ttl,
            },
            locale=user.locale,
        )

    def link(self, token: str) -> str:
        return self.links.url(token)

    async def _resend(self, job: Job, now: datetime) -> Letter | Skip:
        row, user = await self.links.sent_before(job)
        if row is None or user is None or not self._usable(row, user, now):
            return Skip("stale")  # superseded, used or expired meanwhile: a dead link helps nobody
        return self._reset_letter(user, self.links.token_of(job.id), job.id)

    def _reset_letter(self, user: User, token: str, job_id: uuid.UUID) -> Letter:
        return Letter(
            "password_reset",
            user.email,
            {
                "link": self.link(token),
                "code": tokens.show_code(self.links.code_of(job_id)),
                "ttl_minutes": int(self.links.ttl.total_seconds() // 60),
                "ttl": self.links.ttl,
            },
            locale=user.locale,
        )

    async def prepare_changed_notice(self, job: Job) -> Letter | Skip:
        async with self.store.tx() as tx:
            user = await tx.users.get(job.user_id) if job.user_id else None
        if user is None:
            return Skip("no_account")
        changed = user.password_changed_at or job.created_at
        return Letter(
            "password_changed",
            user.email,
            {
                "changed_at": changed.strftime("%Y-%m-%d %H:%M UTC"),
                "changed": changed,
                "forgot_link": f"{self.public_url}/forgot-password",
                **device_context(job),
            },
            locale=user.locale,
        )

    async def prepare_sign_in_notice(self, job: Job) -> Letter | Skip:
        """The opt-in "new sign-in" notice (`CHASER_AUTH_NOTIFY_NEW_SIGN_IN`)."""
        async with self.store.tx() as tx:
            user = await tx.users.get(job.user_id) if job.user_id else None
        if user is None or not user.is_active:
            return Skip("no_account")
        return Letter(
            "new_sign_in",
            user.email,
            {
                "signed_in_at": job.created_at.strftime("%Y-%m-%d %H:%M UTC"),
                "signed_in": job.created_at,
                "forgot_link": f"{self.public_url}/forgot-password",
                **device_context(job),
            },
            locale=user.locale,
        )

    # -- confirm path -------------------------------------------------------------------------

    @staticmethod
    def _usable(row: ResetToken, user: User, now: datetime) -> bool:
        return Links.usable(row, now) and may_receive_reset(user)

    async def check(self, token: str) -> tuple[ResetToken, User]:
        """The token's row and account if the token may be used now; else InvalidToken.

        Never changes anything: the verify endpoint and the page call this freely."""
        if not tokens.is_well_formed(token):
            metrics.TOKENS.labels(RESET_PURPOSE, "invalid").inc()
            raise InvalidToken()
        now = self.clock()
        async with self.store.tx() as tx:
            row = await self.links.find(tx, token)
            user = await tx.users.get(row.user_id) if row is not None else None
        if row is None or user is None or not self._usable(row, user, now):
            expired = row is not None and Links.expired(row, now)
            metrics.TOKENS.labels(RESET_PURPOSE, "expired" if expired else "invalid").inc()
            raise InvalidToken()
        return row, user

    async def exchange_code(
        self, raw_email: str, code: str, *, client: str | None = None
    ) -> tuple[str, datetime]:
        """The token (and its expiry) of the live reset link whose one-time code `code` is,
        mailed to `raw_email`; the code is used up, the link is not — the token then works as
        one from the link. InvalidCode otherwise, the same for every reason (an address with no
        account or no live link, a wrong, used, superseded or expired code, one out of tries),
        after the same work (`Links.redeem_code`). Each refusal is audited with the client."""
        digits = tokens.normal_code(code)
        key = address_key(raw_email) or raw_email
        subject = tokens.keyed_hash(self.secret, key)
        now = self.clock()
        row: ResetToken | None = None
        async with self.store.tx() as tx:
            if digits is not None:
                row = await self.links.redeem_code(tx, key, digits, now, self.code_tries)
            if row is None or row.outbox_id is None:
                await tx.audit.record("reset_code_failed", now, subject=subject, client=client)
            else:
                await tx.audit.record(
                    "reset_code_redeemed", now, user_id=row.user_id, subject=subject, client=client
                )
        if row is None or row.outbox_id is None:
            metrics.TOKENS.labels(RESET_PURPOSE, "code_refused").inc()
            raise InvalidCode()
        metrics.TOKENS.labels(RESET_PURPOSE, "code_redeemed").inc()
        return self.links.token_of(row.outbox_id), row.expires_at

    async def confirm(
        self,
        token: str,
        password: str,
        *,
        client: str | None = None,
        device: Device | None = None,
    ) -> AuthResult:
        """Use the token: the new password is set, whatever credential the account had — a
        reset is how an owner takes the account back, so it overrides any change in flight
        (`AccountService.change_password` yields to it) — every session ends, and this one
        starts on the new credential version."""
        try:
            row, user = await self.check(token)
        except InvalidToken:
            async with self.store.tx() as tx:  # the audit trail sees link guessing
                await tx.audit.record("reset_confirm_failed", self.clock(), client=client)
            raise
        # Policy before consuming: a refused password leaves the link usable (docs/api.md).
        self.policy.check(password, user.email)
        password_hash = await self.hasher.hash(password)
        now = self.clock()
        result: AuthResult | None = None
        async with self.store.tx() as tx:
            # The account first, then its tokens, in the order every credential change takes
            # them (`AccountService.change_password`), so two cannot deadlock on PostgreSQL.
            current = await tx.users.lock(user.id)
            # The single UPDATE is the arbiter: of two concurrent confirms, one changes the row.
            consumed = await tx.reset_tokens.consume(row.id, now)
            version = None
            if consumed and may_receive_reset(current):
                version = await tx.users.set_password(user.id, password_hash, now)
            if version is not None:
                await tx.reset_tokens.revoke_all(user.id, now)
                await tx.verify_tokens.revoke_all(user.id, now)
                revoked = await tx.sessions.revoke_all(user.id, now)
                result = await self.sessions.open(tx, user, now, version=version, device=device)
                await tx.outbox.enqueue(
                    PASSWORD_CHANGED, now, user_id=user.id, payload=device_payload(device)
                )
                await self.webhooks.emit(
                    tx, now, [Event(PASSWORD_RESET, user.id, {"other_sessions_ended": revoked})]
                )
                await tx.audit.record(
                    "password_reset_completed",
                    now,
                    user_id=user.id,
                    detail={"sessions_revoked": revoked},
                    client=client,
                )
            else:
                await tx.audit.record("reset_confirm_failed", now, user_id=user.id, client=client)
        if result is None:
            raise InvalidToken()
        metrics.TOKENS.labels(RESET_PURPOSE, "consumed").inc()
        return result
