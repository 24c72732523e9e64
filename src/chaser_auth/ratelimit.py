"""Rate limits through the `limits` library (moving window), in process memory by default or
shared through Redis when `CHASER_AUTH_REDIS_URL` is set (redis-py implementation).

A Redis outage never turns into an error for the client. Every limit then falls back to this
process's own memory — it still holds, per process instead of in sum — and Redis is tried again
`REDIS_RETRY` seconds later; the switch is logged once each way. Failing open (no limits) would
hand an attacker unlimited guesses and inbox flooding for as long as Redis is down; failing
closed (refusing every request) would lock every person out of their account. Redis calls
time out after `REDIS_TIMEOUT`, so a hung server costs a request that long at most, once per
retry period.

Keys never hold an address: callers pass a keyed hash (`tokens.keyed_hash`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from limits import RateLimitItem
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from chaser_auth import metrics
from chaser_auth.errors import RateLimited

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool

REDIS_RETRY = 5.0
REDIS_TIMEOUT = 0.5
log = logging.getLogger("chaser_auth.ratelimit")
T = TypeVar("T")


@dataclass(frozen=True)
class Verdict:
    """A limit's answer. `remaining` and `reset_at` are read for a refusal only: an allowed
    hit is answered without the window's statistics (a second storage call — with Redis, a
    second round trip — on every request)."""

    allowed: bool
    limit: int
    remaining: int = 0
    reset_at: float = 0.0

    def headers(self, scope: str, now: float) -> dict[str, str]:
        retry_after = max(1, int(self.reset_at - now + 0.999))
        return {
            "Retry-After": str(retry_after),
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(int(self.reset_at + 0.999)),
            "X-RateLimit-Scope": scope,
        }


class Limiter:
    def __init__(self, redis_url: str | None, key_prefix: str = "chaser-auth") -> None:
        self._memory = MovingWindowRateLimiter(MemoryStorage())
        self._shared: MovingWindowRateLimiter | None = None
        # We own the connection pool so that shutdown can close it (the storage has no close).
        self._pool: ConnectionPool | None = None
        if redis_url:
            # Imported only when used: a process without Redis saves its memory.
            from redis.asyncio import ConnectionPool  # noqa: PLC0415

            self._pool = ConnectionPool.from_url(
                redis_url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
            )
            storage = RedisStorage(
                "async+" + redis_url,
                implementation="redispy",
                key_prefix=key_prefix,
                wrap_exceptions=True,  # every Redis failure arrives as limits' StorageError
                connection_pool=self._pool,  # type: ignore[arg-type]
            )
            self._shared = MovingWindowRateLimiter(storage)
        self._down_until = 0.0

    async def _ask(self, call: Callable[[MovingWindowRateLimiter], Awaitable[T]]) -> T:
        if self._shared is not None and time.monotonic() >= self._down_until:
            try:
                answer = await call(self._shared)
            except StorageError as exc:
                if self._down_until == 0.0:
                    log.warning(
                        "Redis unavailable (%s): rate limits count in this process's memory "
                        "until it answers again",
                        type(exc.storage_error).__name__,
                    )
                self._down_until = time.monotonic() + REDIS_RETRY
            else:
                if self._down_until != 0.0:
                    log.warning("Redis answers again: rate limits are shared again")
                    self._down_until = 0.0
                return answer
        return await call(self._memory)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()

    async def hit(self, item: RateLimitItem, *keys: str) -> Verdict:
        async def ask(strategy: MovingWindowRateLimiter) -> Verdict:
            if await strategy.hit(item, *keys):
                return Verdict(True, item.amount)
            stats = await strategy.get_window_stats(item, *keys)
            return Verdict(False, item.amount, stats.remaining, stats.reset_time)

        return await self._ask(ask)

    async def blocked(self, item: RateLimitItem, scope: str, key: str, now: float) -> None:
        """Raise RateLimited if `key` has no hits left, without spending one."""

        async def ask(strategy: MovingWindowRateLimiter) -> Verdict | None:
            if await strategy.test(item, scope, key):
                return None
            stats = await strategy.get_window_stats(item, scope, key)
            return Verdict(False, item.amount, stats.remaining, stats.reset_time)

        verdict = await self._ask(ask)
        if verdict is not None:
            metrics.LIMITED.labels(scope).inc()
            raise RateLimited(headers=verdict.headers(scope, now))

    async def enforce(self, item: RateLimitItem, scope: str, key: str, now: float) -> None:
        verdict = await self.hit(item, scope, key)
        if not verdict.allowed:
            metrics.LIMITED.labels(scope).inc()
            raise RateLimited(headers=verdict.headers(scope, now))
