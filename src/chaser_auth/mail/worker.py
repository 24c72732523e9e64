"""The delivery worker: outbox → domain → transport.

Each round it claims due rows (a lease, so a crashed worker's rows come back), asks the domain
what each row should become (a `Letter` to send, or a `Skip`), renders and sends, and records
the outcome. Delivery is at-least-once: the row is marked done only after the transport
accepted the message, and a resend carries the same Message-ID and the same link.

Failures back off exponentially with jitter — "equal jitter": half fixed, half random, so
retries after a shared outage spread out (AWS Architecture Blog, "Exponential Backoff and
Jitter") — and after `mail_max_attempts`, or at once on a permanent SMTP reply, the row
becomes a dead letter for `chaser-auth outbox list|retry`.

Between rounds it sleeps until woken: by a request in its own process, by a PostgreSQL
notification from any process (`store.notify`), or after `worker_poll_interval` at the latest.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from limits import RateLimitItem

from chaser_auth import metrics
from chaser_auth.domain.clock import Clock
from chaser_auth.domain.recovery import (
    PASSWORD_CHANGED,
    RESET_REQUEST,
    AddressLimit,
    Letter,
    Note,
    RecoveryService,
    Skip,
)
from chaser_auth.domain.registration import REGISTER, RegistrationService
from chaser_auth.mail.messages import Renderer
from chaser_auth.mail.transport import DeliveryError, MailTransport
from chaser_auth.ratelimit import Limiter
from chaser_auth.store.notify import OutboxListener
from chaser_auth.store.repositories import Store
from chaser_auth.store.tables import OutboxMessage

log = logging.getLogger("chaser_auth.worker")

BATCH = 16
HOUSEKEEPING_INTERVAL = 3600.0  # seconds between chores: audit retention, old limit hits


class PerAddressLimit:
    """`recovery.AddressLimit` through the rate limiter (the per-address setting)."""

    def __init__(self, limiter: Limiter, item: RateLimitItem) -> None:
        self.limiter = limiter
        self.item = item

    async def allow(self, subject: str) -> bool:
        allowed = (await self.limiter.hit(self.item, "reset-address", subject)).allowed
        if not allowed:
            metrics.LIMITED.labels("address").inc()
        return allowed


class StoredAddressLimit:
    """`recovery.AddressLimit` kept in the database, used when no Redis is configured: the
    allowance then survives restarts and is shared by every `serve` and `worker` process on the
    database, where a process's memory would start from zero each time."""

    def __init__(self, store: Store, clock: Clock, item: RateLimitItem) -> None:
        self.store = store
        self.clock = clock
        self.item = item

    async def allow(self, subject: str) -> bool:
        now = self.clock()
        since = now - timedelta(seconds=self.item.get_expiry())
        async with self.store.tx() as tx:
            allowed = await tx.limit_hits.take(
                "reset-address", subject, self.item.amount, since, now
            )
        if not allowed:
            metrics.LIMITED.labels("address").inc()
        return allowed


class Worker:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        recovery: RecoveryService,
        registration: RegistrationService,
        renderer: Renderer,
        transport: MailTransport,
        address_limit: AddressLimit,
        limiter: Limiter,
        mail_rate: RateLimitItem | None,
        max_attempts: int,
        retry_base: float,
        retry_max: float,
        lease: int,
        poll_interval: float,
        wake: asyncio.Event | None = None,
        listener: OutboxListener | None = None,
        housekeeping: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.recovery = recovery
        self.renderer = renderer
        self.transport = transport
        self.address_limit = address_limit
        self.limiter = limiter
        self.mail_rate = mail_rate
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.lease = timedelta(seconds=lease)
        self.poll_interval = poll_interval
        self.wake = wake or asyncio.Event()
        self.listener = listener
        self.housekeeping = housekeeping
        self._next_housekeeping = 0.0
        self._handlers: dict[str, Callable[[OutboxMessage], Awaitable[Letter | Skip]]] = {
            RESET_REQUEST: lambda job: self.recovery.prepare_reset(job, self.address_limit),
            PASSWORD_CHANGED: self.recovery.prepare_changed_notice,
            REGISTER: lambda job: registration.prepare(job, self.address_limit),
        }

    async def run(self, stop: asyncio.Event) -> None:
        log.info("delivery worker started")
        listening = asyncio.create_task(self.listener.run(stop)) if self.listener else None
        try:
            while not stop.is_set():
                await self._housekeep()
                try:
                    handled = await self.run_once()
                except Exception as exc:  # noqa: BLE001 - the loop must outlive a database outage
                    log.warning("worker round failed: %s", type(exc).__name__)
                    handled = 0
                if handled == 0:
                    await self._idle(stop)
        finally:
            if listening is not None:
                await listening
        log.info("delivery worker stopped")

    async def _housekeep(self) -> None:
        """Hourly chores (audit retention, old limit hits); a failure waits for the next hour."""
        if self.housekeeping is None or time.monotonic() < self._next_housekeeping:
            return
        self._next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL
        try:
            await self.housekeeping()
        except Exception as exc:  # noqa: BLE001 - chores must not stop delivery
            log.warning("housekeeping failed: %s", type(exc).__name__)

    async def _idle(self, stop: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waits, timeout=self.poll_interval, return_when="FIRST_COMPLETED")
        finally:
            for waiter in waits:
                waiter.cancel()
        self.wake.clear()

    async def run_once(self) -> int:
        now = self.clock()
        async with self.store.tx() as tx:
            jobs = await tx.outbox.claim(now, now + self.lease, BATCH)
        # Side by side: a remote SMTP conversation takes tens of milliseconds, and one slow
        # relay must not hold up the rest of the batch. (Database work still takes turns.)
        await asyncio.gather(*(self._deliver(job) for job in jobs))
        return len(jobs)

    async def _deliver(self, job: OutboxMessage) -> None:
        try:
            handler = self._handlers.get(job.kind)
            if handler is None:
                await self._fail(job, "unknown_kind", permanent=True)
                return
            plan = await handler(job)
            if isinstance(plan, Skip):
                await self._finish(job, plan.outcome, plan.notes)
                return
            if self.mail_rate is not None and not await self._within_mail_rate(job, self.mail_rate):
                return
            message = self.renderer.render(
                plan.template, to=plan.to, job_id=job.id, date=self.clock(), context=plan.context
            )
            await self.transport.send(message)
        except DeliveryError as exc:
            await self._fail(job, exc.code, permanent=exc.permanent)
            return
        except Exception as exc:  # noqa: BLE001 - one bad row must not stop the others
            # The type only: an exception's text may quote the address it choked on.
            log.error("delivery of %s failed unexpectedly: %s", job.id, type(exc).__name__)
            await self._fail(job, f"error_{type(exc).__name__}", permanent=False)
            return
        await self._finish(job, "sent", plan.notes)

    async def _within_mail_rate(self, job: OutboxMessage, rate: RateLimitItem) -> bool:
        verdict = await self.limiter.hit(rate, "mail-rate", "all")
        if verdict.allowed:
            return True
        metrics.LIMITED.labels("mail-rate").inc()
        # Over the operator's cap: wait for the window, and do not count this as an attempt.
        at = self.clock() + timedelta(seconds=max(0.0, verdict.reset_at - time.time()))
        async with self.store.tx() as tx:
            await tx.outbox.retry_later(job.id, at, "mail_rate", refund=True)
        return False

    async def _finish(self, job: OutboxMessage, outcome: str, notes: Sequence[Note] = ()) -> None:
        now = self.clock()
        async with self.store.tx() as tx:
            await tx.outbox.finish(job.id, outcome, now)
            for note in notes:
                await tx.audit.record(note.event, now, user_id=note.user_id, subject=note.subject)
            if outcome == "sent":
                await tx.audit.record(
                    "mail_sent", now, user_id=job.user_id, detail={"kind": job.kind}
                )
        metrics.MAIL.labels(job.kind, outcome).inc()
        log.info("outbox %s %s: %s", job.kind, job.id, outcome)

    def backoff(self, attempts: int) -> float:
        ceiling = min(self.retry_max, self.retry_base * 2 ** max(0, attempts - 1))
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))  # noqa: S311 - jitter, not a secret

    async def _fail(self, job: OutboxMessage, code: str, *, permanent: bool) -> None:
        now: datetime = self.clock()
        async with self.store.tx() as tx:
            if permanent or job.attempts >= self.max_attempts:
                await tx.outbox.bury(job.id, now, code)
                metrics.MAIL.labels(job.kind, "dead").inc()
                log.warning(
                    "outbox %s %s: dead letter after %d attempts (%s)",
                    job.kind,
                    job.id,
                    job.attempts,
                    code,
                )
            else:
                delay = self.backoff(job.attempts)
                await tx.outbox.retry_later(job.id, now + timedelta(seconds=delay), code)
                metrics.MAIL.labels(job.kind, "retried").inc()
                log.info(
                    "outbox %s %s: attempt %d failed (%s), retry in %.1fs",
                    job.kind,
                    job.id,
                    job.attempts,
                    code,
                    delay,
                )
