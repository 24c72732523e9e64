"""The delivery worker: outbox → domain → transport.

Each round it claims due rows (a lease, so a crashed worker's rows come back; renewed while a
slow relay holds the message, so a live worker's rows are not taken over), asks the domain
what each row should become (a `Letter` to send, or a `Skip`), renders and sends — the sending
runs on beside the next rounds, so a slow relay does not hold up the rows behind it — and
records the outcome. Delivery is at-least-once: the row is marked done only after the transport
accepted the message, and a resend carries the same Message-ID and the same link.

Failures back off exponentially with jitter — "equal jitter": half fixed, half random, so
retries after a shared outage spread out (AWS Architecture Blog, "Exponential Backoff and
Jitter") — and after `mail_max_attempts`, or at once on a permanent SMTP reply, the row
becomes a dead letter for `chaser-auth outbox list|retry`.

Webhook rows (kind `webhook:<endpoint>`, `domain.webhooks`) take the same road: claimed with a
lease, posted by `mail.webhooks` (signed, the row's id as `webhook-id` on every attempt), marked
done on a 2xx answer, retried with the same backoff, and dead after `webhook_max_attempts`. The
outbox hands out one account's rows of one endpoint one at a time, oldest first.

Between rounds it sleeps until woken: by a request in its own process, by a PostgreSQL
notification from any process (`store.notify`), or after `worker_poll_interval` at the latest.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from limits import RateLimitItem
from sqlalchemy.exc import DBAPIError

from chaser_auth import metrics
from chaser_auth.domain.addresschange import AddressChangeService
from chaser_auth.domain.clock import Clock
from chaser_auth.domain.outbox import (
    EMAIL_CHANGE,
    EMAIL_CHANGED,
    INVITATION,
    NEW_SIGN_IN,
    PASSWORD_CHANGED,
    REGISTER,
    RESET_REQUEST,
    VERIFY_RESEND,
    AddressLimit,
    Letter,
    Note,
    Skip,
)
from chaser_auth.domain.recovery import RecoveryService
from chaser_auth.domain.registration import RegistrationService
from chaser_auth.domain.webhooks import NO_WEBHOOKS, Event, Webhooks
from chaser_auth.i18n import DEFAULT as DEFAULT_LOCALE
from chaser_auth.mail.messages import Renderer
from chaser_auth.mail.transport import DeliveryError, MailTransport
from chaser_auth.mail.webhooks import WebhookSender
from chaser_auth.ratelimit.limiter import Limiter
from chaser_auth.store.intake import GroupCommit
from chaser_auth.store.notify import OutboxListener
from chaser_auth.store.repositories import WEBHOOK_PREFIX, Job
from chaser_auth.store.transactions import Store

log = logging.getLogger("chaser_auth.worker")

BATCH = 256  # rows claimed per round
SENDING = 16  # messages with the transport at once
IN_FLIGHT = 64  # messages planned and not yet handed over, across rounds, before a round waits
GATHER = 0.025  # seconds to let rows gather before a round (unless the last one was full)
HOUSEKEEPING_INTERVAL = 3600.0  # seconds between chores (Housekeeping.run)


@dataclass(frozen=True)
class Post:
    """A webhook row's plan: the event's JSON for the endpoint `endpoint`."""

    endpoint: str
    body: bytes


Plan = Letter | Skip | Post | None
Handler = Callable[[Sequence[Job]], Awaitable[list[Letter | Skip]]]


def one_by_one(prepare: Callable[[Job], Awaitable[Letter | Skip]]) -> Handler:
    """A batch handler for a kind that is rare enough to be planned a row at a time."""

    async def handler(jobs: Sequence[Job]) -> list[Letter | Skip]:
        return [await prepare(job) for job in jobs]

    return handler


Outcome = tuple[Job, str, Sequence[Note], Sequence[Event]]


class Worker:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        recovery: RecoveryService,
        registration: RegistrationService,
        renderer: Renderer,
        address_change: AddressChangeService | None = None,
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
        webhooks: Webhooks = NO_WEBHOOKS,
        sender: WebhookSender | None = None,
        webhook_max_attempts: int | None = None,
    ) -> None:
        self.webhooks = webhooks
        self.sender = sender
        self.webhook_max_attempts = webhook_max_attempts or max_attempts
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
        # Outcomes are recorded through a group commit: the rows that need no mail (most rows,
        # under a flood) in one transaction for all their outcomes and audit notes, and each
        # sent message as soon as the transport took it, with whatever else is ready then.
        self._record: GroupCommit[Sequence[Outcome]] = GroupCommit(self._finish)
        self._gate = asyncio.Semaphore(SENDING)
        # Each message in flight by its row, and the lease the worker holds it with: leases
        # about to run out are renewed while the relay takes its time, and a row whose lease
        # ran out all the same and that a later round claims again is not sent a second time.
        self._sending: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._held: dict[uuid.UUID, datetime] = {}
        self._handlers: dict[str, Handler] = {
            RESET_REQUEST: lambda jobs: self.recovery.prepare_resets(jobs, self.address_limit),
            PASSWORD_CHANGED: one_by_one(self.recovery.prepare_changed_notice),
            REGISTER: one_by_one(lambda job: registration.prepare(job, self.address_limit)),
            INVITATION: one_by_one(self.recovery.prepare_invitation),
            NEW_SIGN_IN: one_by_one(self.recovery.prepare_sign_in_notice),
            VERIFY_RESEND: one_by_one(
                lambda job: registration.prepare_resend(job, self.address_limit)
            ),
        }
        if address_change is not None:
            self._handlers[EMAIL_CHANGE] = one_by_one(
                lambda job: address_change.prepare_request(job, self.address_limit)
            )
            self._handlers[EMAIL_CHANGED] = one_by_one(address_change.prepare_changed_notice)

    async def run(self, stop: asyncio.Event) -> None:
        log.info("delivery worker started")
        listening = asyncio.create_task(self.listener.run(stop)) if self.listener else None
        keeping = asyncio.create_task(self._keep_leases())
        try:
            while not stop.is_set():
                await self._housekeep()
                try:
                    handled = await self._round()
                except Exception as exc:  # noqa: BLE001 - the loop must outlive a database outage
                    log.warning("worker round failed: %s", type(exc).__name__)
                    handled = 0
                if handled == 0:
                    await self._idle(stop)
                if handled < BATCH:
                    # A round started at every wake-up would handle a row or two and pay its
                    # transactions for those alone, and on one event loop it would fall in
                    # among the requests of a client that sends one after another: a short
                    # pause lets the next round take many at once.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), GATHER)
        finally:
            await self._drain()
            keeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeping
            if listening is not None:
                await listening
        log.info("delivery worker stopped")

    async def _housekeep(self) -> None:
        """Hourly chores (retention, old limit hits); a failure waits for the next hour."""
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
        """One round, and every message it sends handed over: rows claimed."""
        handled = await self._round()
        await self._drain()
        return handled

    async def _round(self) -> int:
        """Claim a batch, plan it kind by kind, record the rows that need no mail, and start
        sending the rest; rows claimed. The sending runs on into the next rounds (`SENDING` at
        a time, `IN_FLIGHT` waiting at most): a round that waited for its slowest SMTP
        conversation would cap the worker at one batch per conversation, and under load the
        outbox would grow behind it. A sent message is recorded the moment the transport took
        it — were the process to die meanwhile, only messages in flight would go out again
        after the lease, with the same Message-ID and link."""
        while len(self._sending) >= IN_FLIGHT:
            await asyncio.wait(self._sending.values(), return_when=asyncio.FIRST_COMPLETED)
        now = self.clock()
        until = now + self.lease
        async with self.store.tx() as tx:
            claimed = await tx.outbox.claim(now, until, BATCH)
        if not claimed:
            return 0
        # A row of ours still with the relay (its lease ran out meanwhile) stays with its send,
        # under the new lease: the send records it, or it goes again after that lease.
        jobs = []
        for job in claimed:
            if job.id in self._sending:
                self._held[job.id] = until
            else:
                jobs.append(job)
        skipped: list[Outcome] = []
        for job, plan in await self._plan(jobs):
            if isinstance(plan, Skip):
                skipped.append((job, plan.outcome, plan.notes, plan.events))
            elif plan is not None:
                sending: Coroutine[Any, Any, None] = (
                    self._post(job, plan) if isinstance(plan, Post) else self._deliver(job, plan)
                )
                task = asyncio.create_task(sending)
                self._sending[job.id] = task
                self._held[job.id] = until
                task.add_done_callback(functools.partial(self._sent, job.id))
        if skipped:
            # A failed write: its rows were handled but not recorded, and go again after the
            # lease.
            await self._record.submit(skipped)
        return len(claimed)

    def _sent(self, row: uuid.UUID, _: asyncio.Task[None]) -> None:
        self._sending.pop(row, None)
        self._held.pop(row, None)

    async def _keep_leases(self) -> None:
        """Every quarter of a lease, renew the leases of messages still with the relay that
        run out within half a lease: a slow relay's message stays with the worker sending it,
        instead of another worker taking it over and sending it too. Runs until cancelled."""
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 4)
            try:
                await self._renew()
            except Exception as exc:  # noqa: BLE001 - tried again at the next turn
                log.warning("renewing leases failed: %s", type(exc).__name__)

    async def _renew(self) -> None:
        now = self.clock()
        due = [(row, lease) for row, lease in self._held.items() if lease - now <= self.lease / 2]
        if not due:
            return
        until = now + self.lease
        async with self.store.tx() as tx:
            renewed = set(await tx.outbox.renew(due, until))
        for row, lease in due:
            if self._held.get(row) != lease:
                continue  # sent meanwhile, or claimed again by a round under a newer lease
            if row in renewed:
                self._held[row] = until
            else:  # finished, or another worker's now: nothing left to renew
                del self._held[row]

    async def _drain(self) -> None:
        """Wait for every message in flight to be handed over and recorded (or failed)."""
        while self._sending:
            await asyncio.wait(self._sending.values())

    async def _plan(self, jobs: Sequence[Job]) -> list[tuple[Job, Plan]]:
        """Each job with what it becomes; None where it failed (already recorded)."""
        groups: dict[str, list[Job]] = {}
        plans: dict[uuid.UUID, Letter | Skip | Post] = {}
        for job in jobs:
            if job.kind.startswith(WEBHOOK_PREFIX):
                plans[job.id] = self._hook(job)
            else:
                groups.setdefault(job.kind, []).append(job)
        for kind, group in groups.items():
            handler = self._handlers.get(kind)
            if handler is None:
                for job in group:
                    await self._fail(job, "unknown_kind", permanent=True)
                continue
            try:
                plans.update(zip((job.id for job in group), await handler(group), strict=True))
                continue
            except DBAPIError as exc:
                # The database failed us, not a row: every row waits for its retry (its
                # per-address hits may be counted already; once more row by row would count
                # them twice).
                log.warning("planning %d %s rows failed: %s", len(group), kind, type(exc).__name__)
                for job in group:
                    await self._fail(job, "database", permanent=False)
                continue
            except Exception as exc:  # noqa: BLE001 - retried row by row below
                # One bad row must not stop the others: the group again, one row at a time.
                log.warning(
                    "planning %d %s rows failed (%s); row by row",
                    len(group),
                    kind,
                    type(exc).__name__,
                )
            for job in group:
                try:
                    (plans[job.id],) = await handler([job])
                except Exception as exc:  # noqa: BLE001 - recorded on the row
                    # The type only: an exception's text may quote the address it choked on.
                    log.error("planning %s failed unexpectedly: %s", job.id, type(exc).__name__)
                    await self._fail(job, f"error_{type(exc).__name__}", permanent=False)
        return [(job, plans.get(job.id)) for job in jobs]

    @staticmethod
    def _hook(job: Job) -> Post:
        """The event as it goes out: the stored payload, as compact JSON."""
        body = json.dumps(job.payload or {}, separators=(",", ":"), ensure_ascii=False)
        return Post(job.kind.removeprefix(WEBHOOK_PREFIX), body.encode("utf-8"))

    async def _post(self, job: Job, post: Post) -> None:
        """Post a webhook row and record it as sent (as `_deliver` does for mail)."""
        try:
            async with self._gate:
                try:
                    if self.sender is None:
                        raise DeliveryError("no_endpoint", permanent=True)
                    await self.sender.post(
                        post.endpoint, WebhookSender.message_id(job.id), post.body
                    )
                except DeliveryError as exc:
                    await self._fail(job, exc.code, permanent=exc.permanent)
                    return
            await self._record.submit([(job, "sent", (), ())])
            # The account's next event for this endpoint may go now.
            self.wake.set()
        except Exception as exc:  # noqa: BLE001 - nobody awaits this task's result
            log.warning("outbox %s %s: not recorded (%s)", job.kind, job.id, type(exc).__name__)

    async def _deliver(self, job: Job, letter: Letter) -> None:
        """Send `letter` and record it as sent. Runs as a task of its own: whatever fails here
        (the database, while recording) is logged, and the row goes again after its lease,
        with the same Message-ID and link."""
        try:
            if await self._send(job, letter):
                await self._record.submit([(job, "sent", letter.notes, ())])
        except Exception as exc:  # noqa: BLE001 - nobody awaits this task's result
            log.warning("outbox %s %s: not recorded (%s)", job.kind, job.id, type(exc).__name__)

    async def _send(self, job: Job, letter: Letter) -> bool:
        """Render and hand `letter` to the transport; False if it did not go (the failure is
        recorded on the row)."""
        async with self._gate:
            try:
                if self.mail_rate is not None and not await self._within_mail_rate(
                    job, self.mail_rate
                ):
                    return False
                message = self.renderer.render(
                    letter.template,
                    to=letter.to,
                    job_id=job.id,
                    date=self.clock(),
                    context=letter.context,
                    locale=letter.locale or DEFAULT_LOCALE,
                )
                await self.transport.send(message)
            except DeliveryError as exc:
                await self._fail(job, exc.code, permanent=exc.permanent)
                return False
            except Exception as exc:  # noqa: BLE001 - one bad row must not stop the others
                log.error("delivery of %s failed unexpectedly: %s", job.id, type(exc).__name__)
                await self._fail(job, f"error_{type(exc).__name__}", permanent=False)
                return False
        return True

    async def _within_mail_rate(self, job: Job, rate: RateLimitItem) -> bool:
        verdict = await self.limiter.hit(rate, "mail-rate", "all")
        if verdict.allowed:
            return True
        metrics.LIMITED.labels("mail-rate").inc()
        # Over the operator's cap: wait for the window, and do not count this as an attempt.
        at = self.clock() + timedelta(seconds=max(0.0, verdict.reset_at - time.time()))
        async with self.store.tx() as tx:
            await tx.outbox.retry_later(job.id, at, "mail_rate", refund=True)
        return False

    async def _finish(self, items: Sequence[Sequence[Outcome]]) -> None:
        """Record outcomes and their audit events, in one transaction."""
        done = [outcome for item in items for outcome in item]
        if not done:
            return
        now = self.clock()
        finished: dict[str, list[uuid.UUID]] = {}
        events: list[dict[str, Any]] = []
        sent: list[Job] = []
        emitted: list[Event] = []
        for job, outcome, notes, happened in done:
            finished.setdefault(outcome, []).append(job.id)
            events += [note.event_at(now) for note in notes]
            emitted += happened
            if outcome == "sent" and not job.kind.startswith(WEBHOOK_PREFIX):
                sent.append(job)
        async with self.store.tx() as tx:
            # A request's row was matched to its account while it was planned, after the claim
            # that `job` was read from: `mail_sent` names the account as the row does now, so
            # that it is kept with the account's other events (Housekeeping.audit_retention).
            unresolved = [job.id for job in sent if job.user_id is None]
            accounts = await tx.outbox.accounts_of(unresolved) if unresolved else {}
            events += [
                Note("mail_sent", job.user_id or accounts.get(job.id)).event_at(
                    now, {"kind": job.kind}
                )
                for job in sent
            ]
            await tx.outbox.lock([job.id for job, *_ in done])  # no deadlock with `_renew`
            for outcome, ids in finished.items():
                await tx.outbox.finish_many(ids, outcome, now)
            await tx.audit.record_many(events)
            # A request matched to an account that needed no mail: its event goes with it.
            await self.webhooks.emit(tx, now, emitted)
        for (kind, outcome), count in Counter(
            (job.kind, outcome) for job, outcome, *_ in done
        ).items():
            metrics.MAIL.labels(kind, outcome).inc(count)
        # Rows that needed no mail are most of a flood: their lines are for debugging.
        debug = log.isEnabledFor(logging.DEBUG)
        for job, outcome, *_ in done:
            if outcome == "sent":
                log.info("outbox %s %s: %s", job.kind, job.id, outcome)
            elif debug:
                log.debug("outbox %s %s: %s", job.kind, job.id, outcome)

    def backoff(self, attempts: int) -> float:
        ceiling = min(self.retry_max, self.retry_base * 2 ** max(0, attempts - 1))
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))  # noqa: S311 - jitter, not a secret

    async def _fail(self, job: Job, code: str, *, permanent: bool) -> None:
        now: datetime = self.clock()
        async with self.store.tx() as tx:
            webhook = job.kind.startswith(WEBHOOK_PREFIX)
            most = self.webhook_max_attempts if webhook else self.max_attempts
            if permanent or job.attempts >= most:
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
