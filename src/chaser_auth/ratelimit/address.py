"""The per-address budgets, kept one of two ways: in the rate limiter, when Redis shares it
between processes, or else in the database, where every process on the file sees the same
count and a restart forgets nothing. Two budgets: mail (`domain.outbox.AddressLimit`:
`PerAddressLimit`, `StoredAddressLimit`) and tries at one-time codes (`CodeTries`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta

from limits import RateLimitItem

from chaser_auth import metrics
from chaser_auth.domain.clock import Clock
from chaser_auth.errors import RateLimited
from chaser_auth.ratelimit.limiter import Limiter, Verdict
from chaser_auth.store.transactions import Store


class PerAddressLimit:
    """`domain.outbox.AddressLimit` through the rate limiter (the per-address setting)."""

    def __init__(self, limiter: Limiter, item: RateLimitItem) -> None:
        self.limiter = limiter
        self.item = item

    async def allow_many(self, subjects: Sequence[str]) -> list[bool]:
        allowed: list[bool] = []
        refused: set[str] = set()  # a refused hit does not count: the rest of the batch is too
        for subject in subjects:
            ok = (
                subject not in refused
                and (await self.limiter.hit(self.item, "reset-address", subject)).allowed
            )
            if not ok:
                refused.add(subject)
                metrics.LIMITED.labels("address").inc()
            allowed.append(ok)
        return allowed


class StoredAddressLimit:
    """`domain.outbox.AddressLimit` kept in the database, used when no Redis is configured: the
    allowance then survives restarts and is shared by every `serve` and `worker` process on the
    database, where a process's memory would start from zero each time."""

    def __init__(self, store: Store, clock: Clock, item: RateLimitItem) -> None:
        self.store = store
        self.clock = clock
        self.item = item

    async def allow_many(self, subjects: Sequence[str]) -> list[bool]:
        if not subjects:
            return []
        now = self.clock()
        since = now - timedelta(seconds=self.item.get_expiry())
        async with self.store.tx() as tx:
            allowed = await tx.limit_hits.take_many(
                "reset-address", subjects, self.item.amount, since, now
            )
        metrics.LIMITED.labels("address").inc(allowed.count(False))
        return allowed


CODE_SCOPE = "code-address"


class CodeTries:
    """The budget of tries at the one-time codes of one address from all clients together
    (`CHASER_AUTH_RATE_LIMIT_CODE_PER_ADDRESS`): in Redis when it is configured, else in the
    database — never in one process's memory, so the bound on an attacker's odds
    (docs/security.md, "One-time codes") holds however many processes serve the API."""

    def __init__(
        self, limiter: Limiter, store: Store, clock: Clock, item: RateLimitItem, shared: bool
    ) -> None:
        self.limiter = limiter
        self.store = store
        self.clock = clock
        self.item = item
        self.shared = shared  # Redis is configured

    async def spend(self, subject: str) -> None:
        """Count one try at `subject`'s codes, or raise RateLimited (429, scope
        `code-address`) when its budget is spent."""
        if self.shared:
            await self.limiter.enforce(self.item, CODE_SCOPE, subject, time.time())
            return
        now = self.clock()
        since = now - timedelta(seconds=self.item.get_expiry())
        async with self.store.tx() as tx:
            [allowed] = await tx.limit_hits.take_many(
                CODE_SCOPE, [subject], self.item.amount, since, now
            )
            oldest = None if allowed else await tx.limit_hits.oldest(CODE_SCOPE, subject, since)
        if allowed:
            return
        metrics.LIMITED.labels(CODE_SCOPE).inc()
        frees_at = (oldest or now).timestamp() + self.item.get_expiry()
        verdict = Verdict(False, self.item.amount, 0, frees_at)
        raise RateLimited(headers=verdict.headers(CODE_SCOPE, now.timestamp()))
