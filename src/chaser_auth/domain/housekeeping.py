"""Housekeeping: the worker's hourly chores — retention of the audit trail and the outbox,
sign-ups nobody verified, limit hits past their window — and the operator's look at the outbox
and the audit trail (`chaser-auth outbox`, `chaser-auth audit`, `/metrics`). Each is one call
here, so no entry point (worker, CLI, API) writes a query of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from chaser_auth.domain.clock import Clock
from chaser_auth.domain.webhooks import ACCOUNT_DELETED, NO_WEBHOOKS, Event, Webhooks
from chaser_auth.store.tables import AuditEvent, OutboxMessage
from chaser_auth.store.transactions import Store, Tx

PURGE_CHUNK = 5000  # rows deleted per transaction by the retention chores
LIMIT_HITS_KEPT = timedelta(days=1)  # at least; longer if the per-address window is


@dataclass(frozen=True)
class Housekeeping:
    """How long things are kept: `keep_audit`, CHASER_AUTH_AUDIT_RETENTION_DAYS; `keep_unmatched`,
    CHASER_AUTH_UNMATCHED_RETENTION_HOURS; `keep_outbox`, CHASER_AUTH_OUTBOX_RETENTION_HOURS;
    `keep_pending_sign_up`, CHASER_AUTH_VERIFY_TOKEN_TTL; `address_window`, the longest window of
    the limits kept in the database (mail and code tries per address, tries per code)."""

    store: Store
    clock: Clock
    keep_audit: timedelta
    keep_unmatched: timedelta
    keep_outbox: timedelta
    keep_pending_sign_up: timedelta
    address_window: timedelta
    webhooks: Webhooks = NO_WEBHOOKS

    # -- the worker's hourly chores -----------------------------------------------------------

    async def run(self) -> None:
        """The worker's hourly chores: audit and outbox retention, sign-ups never verified,
        and limit hits past their window."""
        await self.audit_retention()
        await self.outbox_retention()
        await self.pending_sign_up_expiry()
        await self.limit_hit_expiry()

    async def audit_retention(self) -> int:
        """Delete audit events older than the audit retention, and those that name no account
        (a reset request for an unknown address, a confirm with an unknown token) older than
        the unmatched retention; how many went."""
        now = self.clock()
        before = now - self.keep_audit
        unmatched = now - self.keep_unmatched
        return await self._in_chunks(lambda tx: tx.audit.purge(before, unmatched, PURGE_CHUNK))

    async def outbox_retention(self) -> int:
        """Delete delivered and otherwise finished outbox rows older than the outbox retention,
        those that name no account older than the unmatched retention; how many went. Dead
        letters stay for an operator (`outbox retry`, `outbox purge`)."""
        now = self.clock()
        before = now - self.keep_outbox
        unmatched = now - self.keep_unmatched
        return await self._in_chunks(
            lambda tx: tx.outbox.purge_done(before, unmatched, PURGE_CHUNK)
        )

    async def pending_sign_up_expiry(self) -> int:
        """Delete accounts never verified whose newest sign-up's link has expired: a sign-up
        nobody confirms leaves nothing behind, so a flood of sign-ups for made-up addresses
        does not grow the accounts table, and the address is free again. How many went."""
        now = self.clock()
        before = now - self.keep_pending_sign_up
        if not self.webhooks:
            return await self._in_chunks(lambda tx: tx.users.purge_unverified(before, PURGE_CHUNK))

        async def purge(tx: Tx) -> int:
            # The application heard of the sign-up (account.created): it hears of its end.
            doomed = await tx.users.unverified_before(before, PURGE_CHUNK)
            gone = [Event(ACCOUNT_DELETED, user_id, {"by": "expiry"}) for user_id in doomed]
            await self.webhooks.emit(tx, now, gone)
            return await tx.users.delete_many(doomed) if doomed else 0

        return await self._in_chunks(purge)

    async def limit_hit_expiry(self) -> int:
        """Delete the per-address limit's hits that left its window (a day at least); how
        many went."""
        before = self.clock() - max(self.address_window, LIMIT_HITS_KEPT)
        async with self.store.tx() as tx:
            return await tx.limit_hits.purge(before)

    async def _in_chunks(self, purge: Callable[[Tx], Awaitable[int]]) -> int:
        """Run `purge` (which deletes up to `PURGE_CHUNK` rows) a transaction at a time until
        less than a chunk is left: an hour of a flood can be a million rows, and one
        transaction for all of them would hold SQLite's write lock, and the request path
        behind it, for seconds."""
        total = 0
        while True:
            async with self.store.tx() as tx:
                count = await purge(tx)
            total += count
            if count < PURGE_CHUNK:
                return total

    # -- the operator's look ------------------------------------------------------------------

    async def audit_trail(
        self,
        *,
        within: timedelta | None = None,
        event: str | None = None,
        user_id: uuid.UUID | None = None,
        limit: int = 100,
    ) -> Sequence[AuditEvent]:
        """The newest `limit` audit events of the last `within` (all if None), oldest first."""
        since = self.clock() - within if within else None
        async with self.store.tx() as tx:
            return await tx.audit.listing(since=since, event=event, user_id=user_id, limit=limit)

    async def outbox_rows(self, status: str | None = None) -> Sequence[OutboxMessage]:
        """Every outbox row (only those in `status` if given), oldest first."""
        async with self.store.tx() as tx:
            return await tx.outbox.listing(status)

    async def retry_dead_letter(self, message_id: uuid.UUID) -> bool:
        """Queue a dead letter for delivery again, due now; False if there is no such one."""
        now = self.clock()
        async with self.store.tx() as tx:
            return await tx.outbox.revive(message_id, now)

    async def purge_outbox(self) -> int:
        """Delete every finished row and dead letter, whatever its age; how many went."""
        async with self.store.tx() as tx:
            return await tx.outbox.purge()

    async def outbox_stats(self) -> tuple[int, datetime | None, int]:
        """(rows waiting, when the oldest waiting row was queued, dead letters)."""
        async with self.store.tx() as tx:
            return await tx.outbox.stats()
