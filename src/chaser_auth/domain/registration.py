"""Sign-up and email verification.

Request path (`register`): the same rule as a reset request — nothing before the answer depends
on whether the address has an account. The body is checked (an address, a password the policy
accepts: both depend only on what was sent), the password is hashed (always, so the cost is the
same), and one outbox row is written. The worker (`prepare`) decides: a new address gets an
account, unverified, and a verification link; an address whose account is not verified yet
gets the same, the newest sign-up's password replacing the pending one and the earlier links
dying; an address with a verified account gets a "you already have an account — reset your
password" email instead, and the new password is thrown away. Either way the mail goes to the
address, so only its owner learns which happened.

Verification links follow the reset links' rules (`tokens`, `links`): derived from the outbox
row, only a digest stored, single use, `VERIFY_TOKEN_TTL`; a newer one revokes the older. The
one-time code mailed beside the link verifies the address as the link does (`verify_code`).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from chaser_auth import metrics
from chaser_auth.domain import tokens
from chaser_auth.domain.accounts import created, new_user
from chaser_auth.domain.addresses import address_key, stored_form
from chaser_auth.domain.clock import Clock
from chaser_auth.domain.devices import Device
from chaser_auth.domain.links import Links
from chaser_auth.domain.outbox import REGISTER, VERIFY_RESEND, AddressLimit, Letter, Skip
from chaser_auth.domain.passwords import PasswordHasher, PasswordPolicy
from chaser_auth.domain.sessions import AuthResult, SessionService
from chaser_auth.domain.webhooks import EMAIL_VERIFIED, NO_WEBHOOKS, Event, Webhooks
from chaser_auth.errors import InvalidAddress, InvalidCode, InvalidToken
from chaser_auth.store.intake import Intake
from chaser_auth.store.repositories import Job
from chaser_auth.store.tables import User, VerifyToken
from chaser_auth.store.transactions import Store

VERIFY_PURPOSE = "verify"


class RegistrationService:
    def __init__(
        self,
        *,
        store: Store,
        intake: Intake,
        clock: Clock,
        secret: bytes,
        verify_ttl: int,
        public_url: str,
        policy: PasswordPolicy,
        hasher: PasswordHasher,
        sessions: SessionService,
        code_tries: int = 5,
        webhooks: Webhooks = NO_WEBHOOKS,
    ) -> None:
        self.webhooks = webhooks
        self.store = store
        self.intake = intake
        self.clock = clock
        self.secret = secret
        self.public_url = public_url
        self.links: Links[VerifyToken] = Links(
            store=store,
            secret=secret,
            purpose=VERIFY_PURPOSE,
            ttl=timedelta(seconds=verify_ttl),
            page=f"{public_url}/verify-email",
            table=lambda tx: tx.verify_tokens,
        )
        self.policy = policy
        self.hasher = hasher
        self.sessions = sessions
        self.code_tries = code_tries

    # -- request path -------------------------------------------------------------------------

    async def register(
        self, raw_email: str, password: str, client: str, locale: str | None = None
    ) -> None:
        """Check and record a sign-up; `locale` is the account's language (the caller has
        chosen it among the shipped ones)."""
        if address_key(raw_email) is None:
            raise InvalidAddress()
        self.policy.check(password, stored_form(raw_email))
        password_hash = await self.hasher.hash(password)
        await self.intake.enqueue(
            REGISTER,
            self.clock(),
            {
                "email": raw_email,
                "password_hash": password_hash,
                "client": client,
                "locale": locale,
            },
        )

    async def request_resend(self, raw_email: str, client: str) -> None:
        """Another verification link, asked for on the request path: like a reset request, one
        outbox row whatever the address (malformed, unknown, verified or waiting), so the
        answer and its timing cannot tell them apart; the worker decides (`prepare_resend`)."""
        await self.intake.enqueue(
            VERIFY_RESEND, self.clock(), {"email": raw_email, "client": client}
        )

    # -- worker -------------------------------------------------------------------------------

    async def prepare_resend(self, job: Job, limit: AddressLimit) -> Letter | Skip:
        """A new verification link for an active account still waiting for verification (its
        older links die); nothing for any other address. The mail counts against the same
        per-address budget as reset and sign-up mail."""
        now = self.clock()
        if job.user_id is not None:  # resolved on an earlier attempt: send the same mail again
            return await self._resend(job, now)
        payload = job.payload or {}
        client = str(payload["client"]) if payload.get("client") else None
        key = address_key(str(payload.get("email", "")))
        if key is None:
            return Skip("invalid")
        async with self.store.tx() as tx:
            user = await tx.users.by_key(key)
        if user is None:
            return Skip("no_account")
        if not user.is_active:
            return Skip("account_disabled")
        if user.email_verified:
            return Skip("already_verified")
        if not (await limit.allow_many([tokens.keyed_hash(self.secret, key)]))[0]:
            return Skip("suppressed")
        async with self.store.tx() as tx:
            locked = await tx.users.lock(user.id)
            if locked is None or locked.email_verified or not locked.is_active:
                return Skip("stale")
            await tx.audit.record("verification_resent", now, user_id=user.id, client=client)
            [token] = await self.links.issue(tx, [(user.id, job.id)], now)
        return self._verify_letter(locked, token, job.id)

    async def prepare(self, job: Job, limit: AddressLimit) -> Letter | Skip:
        now = self.clock()
        if job.user_id is not None:  # resolved on an earlier attempt: send the same mail again
            return await self._resend(job, now)
        payload = job.payload or {}
        raw, password_hash = str(payload.get("email", "")), payload.get("password_hash")
        client = str(payload["client"]) if payload.get("client") else None
        locale = str(payload["locale"]) if payload.get("locale") else None
        key = address_key(raw)
        if key is None or not isinstance(password_hash, str):
            return Skip("invalid")
        # The same per-address budget as reset mail: sign-ups cannot flood an inbox either.
        if not (await limit.allow_many([tokens.keyed_hash(self.secret, key)]))[0]:
            return Skip("suppressed")
        async with self.store.tx() as tx:
            found = await tx.users.by_key(key)
            user = await tx.users.lock(found.id) if found is not None else None
            if user is None:
                user = new_user(raw, key, password_hash, now, verified=False, locale=locale)
                await tx.users.add(user)
                await self.webhooks.emit(tx, now, [created(user, "sign_up")])
                event = "account_registered"
            elif user.is_active and not user.email_verified:
                # Signed up again before anyone verified: the newest sign-up's password
                # replaces the pending one, and the links of the earlier sign-ups die with it
                # (`Links.issue`). Pre-registration ("pre-hijacking", Sudhodanan & Paverd 2022)
                # thus gains nothing: a password chosen by someone who signed the address up
                # earlier never becomes usable once the mailbox owner signs up and follows the
                # newest link, and the address is still only verified from that mailbox.
                await tx.users.replace_pending(user.id, password_hash, now, locale)
                user.locale = locale
                event = "account_registered_again"
            else:
                await tx.outbox.resolve_many([(job.id, user.id)])  # forgets the address, hash
                await tx.audit.record("register_existing", now, user_id=user.id, client=client)
                return self._exists_letter(user) if user.is_active else Skip("account_disabled")
            await tx.audit.record(event, now, user_id=user.id, client=client)
            [token] = await self.links.issue(tx, [(user.id, job.id)], now)
        return self._verify_letter(user, token, job.id)

    async def _resend(self, job: Job, now: datetime) -> Letter | Skip:
        row, user = await self.links.sent_before(job)
        if user is None or not user.is_active:
            return Skip("stale")
        if row is None:  # this row was the "you already have an account" notice
            return self._exists_letter(user)
        if not Links.usable(row, now):
            return Skip("stale")
        return self._verify_letter(user, self.links.token_of(job.id), job.id)

    def _verify_letter(self, user: User, token: str, job_id: uuid.UUID) -> Letter:
        return Letter(
            "verify_email",
            user.email,
            {
                "link": self.links.url(token),
                "code": tokens.show_code(self.links.code_of(job_id)),
                "ttl_hours": max(1, int(self.links.ttl.total_seconds() // 3600)),
                "ttl": self.links.ttl,
            },
            locale=user.locale,
        )

    def _exists_letter(self, user: User) -> Letter:
        return Letter(
            "account_exists",
            user.email,
            {"forgot_link": f"{self.public_url}/forgot-password"},
            locale=user.locale,
        )

    # -- verify path --------------------------------------------------------------------------

    async def verify(
        self, token: str, *, client: str | None = None, device: Device | None = None
    ) -> AuthResult:
        """Use the token: the address is verified and a session starts. InvalidToken otherwise."""
        try:
            result = await self._verify(token, client, device)
        except InvalidToken as exc:
            metrics.TOKENS.labels(VERIFY_PURPOSE, exc.reason).inc()
            raise
        metrics.TOKENS.labels(VERIFY_PURPOSE, "consumed").inc()
        return result

    async def _verify(self, token: str, client: str | None, device: Device | None) -> AuthResult:
        if not tokens.is_well_formed(token):
            raise InvalidToken()
        now = self.clock()
        async with self.store.tx() as tx:
            row = await self.links.find(tx, token)
            # Locked: a sign-up of the same address in flight (which replaces the pending
            # password and revokes this link) either went first — and the consume below fails —
            # or waits for this verification and then finds the account verified.
            user = await tx.users.lock(row.user_id) if row is not None else None
            # The single UPDATE decides between concurrent uses, as for reset tokens.
            if row is None or user is None or not user.is_active:
                raise InvalidToken()
            if not await tx.verify_tokens.consume(row.id, now):
                expired = Links.expired(row, now)
                raise InvalidToken(reason="expired" if expired else "invalid")
            await tx.users.mark_verified(user.id)
            await tx.verify_tokens.revoke_all(user.id, now)
            result = await self.sessions.open(
                tx, user, now, version=user.credential_version, device=device
            )
            await self.webhooks.emit(tx, now, [verified(user)])
            await tx.audit.record("email_verified", now, user_id=user.id, client=client)
        return result

    async def verify_code(
        self, raw_email: str, code: str, *, client: str | None = None
    ) -> AuthResult:
        """Verify the address with the one-time code mailed beside its newest link: the same
        as following the link (`verify`). InvalidCode otherwise, one answer for every reason,
        after the same work (`Links.redeem_code`)."""
        digits = tokens.normal_code(code)
        key = address_key(raw_email) or raw_email
        subject = tokens.keyed_hash(self.secret, key)
        now = self.clock()
        result: AuthResult | None = None
        user: User | None = None
        async with self.store.tx() as tx:
            row = None
            if digits is not None:
                # The account first, then its links, in the order a sign-up takes them (so
                # two cannot deadlock on PostgreSQL), and looked up by the address whether or
                # not there is one, so both cases do the same work. Locked as in `_verify`: a
                # sign-up in flight either went first (and revoked the link, so the consume
                # fails) or waits for this verification.
                user = await tx.users.lock_key(key)
                row = await self.links.redeem_code(tx, key, digits, now, self.code_tries)
            if (
                row is not None
                and user is not None
                and user.id == row.user_id
                and user.is_active
                and await tx.verify_tokens.consume(row.id, now)
            ):
                await tx.users.mark_verified(user.id)
                await tx.verify_tokens.revoke_all(user.id, now)
                result = await self.sessions.open(tx, user, now, version=user.credential_version)
                await self.webhooks.emit(tx, now, [verified(user)])
                await tx.audit.record(
                    "email_verified",
                    now,
                    user_id=user.id,
                    subject=subject,
                    detail={"by": "code"},
                    client=client,
                )
            else:
                await tx.audit.record("verify_code_failed", now, subject=subject, client=client)
        if result is None:
            metrics.TOKENS.labels(VERIFY_PURPOSE, "code_refused").inc()
            raise InvalidCode()
        metrics.TOKENS.labels(VERIFY_PURPOSE, "code_redeemed").inc()
        return result


def verified(user: User) -> Event:
    """The `account.email_verified` event."""
    return Event(EMAIL_VERIFIED, user.id, {"email": user.email})
