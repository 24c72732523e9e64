"""Wiring: from one `Settings` to the services every entry point (API, worker, CLI) uses."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from chaser_auth.config import Settings, load_secret_key
from chaser_auth.domain.accounts import AccountService
from chaser_auth.domain.addresschange import AddressChangeService
from chaser_auth.domain.admin import AdminKeys, AdminService
from chaser_auth.domain.clock import Clock, utcnow
from chaser_auth.domain.housekeeping import Housekeeping
from chaser_auth.domain.outbox import AddressLimit
from chaser_auth.domain.passwords import PasswordHasher, PasswordPolicy
from chaser_auth.domain.recovery import RecoveryService
from chaser_auth.domain.registration import RegistrationService
from chaser_auth.domain.sessions import SessionService
from chaser_auth.domain.webhooks import Subscription, Webhooks
from chaser_auth.mail.messages import Renderer
from chaser_auth.mail.transport import FileTransport, MailTransport, SmtpTransport
from chaser_auth.mail.webhooks import Endpoint, WebhookSender
from chaser_auth.mail.worker import Worker
from chaser_auth.ratelimit.address import CodeTries, PerAddressLimit, StoredAddressLimit
from chaser_auth.ratelimit.limiter import Limiter
from chaser_auth.store.engine import create_engine, create_inline_engine, sqlite_path
from chaser_auth.store.intake import Intake, OutboxIntake, SqliteIntake
from chaser_auth.store.notify import OutboxListener, is_postgres
from chaser_auth.store.transactions import Store


def make_transport(settings: Settings) -> MailTransport:
    if settings.smtp_url:
        return SmtpTransport(settings.smtp_url, settings.smtp_timeout)
    return FileTransport(settings.mail_dir)


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    secret: bytes
    store: Store
    limiter: Limiter
    policy: PasswordPolicy
    hasher: PasswordHasher
    sessions: SessionService
    accounts: AccountService
    recovery: RecoveryService
    registration: RegistrationService
    address_change: AddressChangeService
    housekeeping: Housekeeping
    admin: AdminService
    admin_keys: AdminKeys
    code_tries: CodeTries  # the per-address budget of tries at one-time codes
    wake: asyncio.Event
    transport: MailTransport  # the workers' unless one is given; its connections are kept
    webhooks: Webhooks  # the endpoints' subscriptions: which events become outbox rows
    sender: WebhookSender  # the workers' webhook client; its connections are kept

    @classmethod
    def build(cls, settings: Settings, clock: Clock = utcnow) -> Runtime:
        secret = load_secret_key(settings)
        endpoints = settings.webhook_endpoints
        webhooks = Webhooks(Subscription(e.name, e.events) for e in endpoints)
        url = settings.database_url
        store = Store(create_engine(url), create_inline_engine(url))
        policy = PasswordPolicy(settings.password_min_length)
        hasher = PasswordHasher(
            settings.argon2_time_cost, settings.argon2_memory_cost, settings.argon2_parallelism
        )
        sessions = SessionService(
            store, clock, secret, settings.session_idle_ttl, settings.session_max_ttl, webhooks
        )
        limiter = Limiter(settings.redis_url, settings.redis_key_prefix)
        path = sqlite_path(settings.database_url)
        intake: Intake = (
            SqliteIntake(path, store.write_lock) if path is not None else OutboxIntake(store)
        )
        accounts = AccountService(
            store=store,
            clock=clock,
            policy=policy,
            hasher=hasher,
            sessions=sessions,
            notify_new_sign_in=settings.notify_new_sign_in,
            webhooks=webhooks,
        )
        recovery = RecoveryService(
            store=store,
            intake=intake,
            clock=clock,
            secret=secret,
            reset_ttl=settings.reset_token_ttl,
            public_url=settings.public_url,
            policy=policy,
            hasher=hasher,
            sessions=sessions,
            notify_unknown=settings.notify_unknown,
            code_tries=settings.code_tries,
            invitation_ttl=settings.invitation_ttl,
            webhooks=webhooks,
        )
        housekeeping = Housekeeping(
            store=store,
            clock=clock,
            webhooks=webhooks,
            keep_audit=timedelta(days=settings.audit_retention_days),
            keep_unmatched=timedelta(hours=settings.unmatched_retention_hours),
            keep_outbox=timedelta(hours=settings.outbox_retention_hours),
            keep_pending_sign_up=timedelta(seconds=settings.verify_token_ttl),
            # the longest window of the limits kept in limit_hits: a code's tries are
            # counted over its link's lifetime
            address_window=timedelta(
                seconds=max(
                    settings.limit("rate_limit_reset_per_address").get_expiry(),
                    settings.limit("rate_limit_code_per_address").get_expiry(),
                    settings.reset_token_ttl,
                    settings.verify_token_ttl,
                )
            ),
        )
        return cls(
            settings=settings,
            clock=clock,
            secret=secret,
            store=store,
            limiter=limiter,
            policy=policy,
            hasher=hasher,
            sessions=sessions,
            accounts=accounts,
            recovery=recovery,
            registration=RegistrationService(
                store=store,
                intake=intake,
                clock=clock,
                secret=secret,
                verify_ttl=settings.verify_token_ttl,
                public_url=settings.public_url,
                policy=policy,
                hasher=hasher,
                sessions=sessions,
                code_tries=settings.code_tries,
                webhooks=webhooks,
            ),
            address_change=AddressChangeService(
                store=store,
                clock=clock,
                secret=secret,
                ttl=settings.email_change_ttl,
                public_url=settings.public_url,
                hasher=hasher,
                sessions=sessions,
            ),
            housekeeping=housekeeping,
            admin=AdminService(
                store=store,
                clock=clock,
                accounts=accounts,
                sessions=sessions,
                recovery=recovery,
                housekeeping=housekeeping,
            ),
            admin_keys=AdminKeys(settings.admin_key_digests),
            code_tries=CodeTries(
                limiter,
                store,
                clock,
                settings.limit("rate_limit_code_per_address"),
                shared=bool(settings.redis_url),
            ),
            wake=asyncio.Event(),
            transport=make_transport(settings),
            webhooks=webhooks,
            sender=WebhookSender(
                [Endpoint(e.name, e.url, e.secret) for e in endpoints], settings.webhook_timeout
            ),
        )

    def worker(self, transport: MailTransport | None = None) -> Worker:
        s = self.settings
        listener = (
            OutboxListener(s.database_url, self.wake) if is_postgres(s.database_url) else None
        )
        return Worker(
            store=self.store,
            clock=self.clock,
            recovery=self.recovery,
            registration=self.registration,
            address_change=self.address_change,
            renderer=Renderer(s.mail_from, s.templates_dir),
            transport=transport or self.transport,
            address_limit=self._address_limit(),
            limiter=self.limiter,
            mail_rate=s.limit("mail_rate") if s.mail_rate else None,
            max_attempts=s.mail_max_attempts,
            retry_base=s.mail_retry_base,
            retry_max=s.mail_retry_max,
            lease=s.worker_lease,
            poll_interval=s.worker_poll_interval,
            wake=self.wake,
            listener=listener,
            housekeeping=self.housekeeping.run,
            webhooks=self.webhooks,
            sender=self.sender,
            webhook_max_attempts=s.webhook_max_attempts,
        )

    def _address_limit(self) -> AddressLimit:
        item = self.settings.limit("rate_limit_reset_per_address")
        if self.settings.redis_url:
            return PerAddressLimit(self.limiter, item)
        return StoredAddressLimit(self.store, self.clock, item)

    async def close(self) -> None:
        await self.transport.close()
        await self.sender.close()
        await self.recovery.intake.close()
        await self.limiter.close()
        await self.store.close()
