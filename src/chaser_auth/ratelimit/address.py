"""The per-address budget on mail (`domain.outbox.AddressLimit`), kept one of two ways: in the
rate limiter, when Redis shares it between processes (`PerAddressLimit`), or else in the
database (`StoredAddressLimit`), where every process on the file sees the same count and a
restart forgets nothing."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from limits import RateLimitItem

from chaser_auth import metrics
from chaser_auth.domain.clock import Clock
from chaser_auth.ratelimit.limiter import Limiter
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
