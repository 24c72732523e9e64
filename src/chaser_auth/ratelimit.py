"""Rate limits through the `limits` library (moving window), in process memory by default or
shared through Redis when `CHASER_AUTH_REDIS_URL` is set (redis-py implementation).

Keys never hold an address: callers pass a keyed hash (`tokens.keyed_hash`)."""

from __future__ import annotations

from dataclasses import dataclass

from limits import RateLimitItem
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import ConnectionPool

from chaser_auth.errors import RateLimited


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset_at: float

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
    def __init__(self, redis_url: str | None) -> None:
        self.storage: Storage
        # We own the connection pool so that shutdown can close it (the storage has no close).
        self._pool = ConnectionPool.from_url(redis_url) if redis_url else None
        if redis_url:
            self.storage = RedisStorage(
                "async+" + redis_url,
                implementation="redispy",
                key_prefix="chaser-auth",
                connection_pool=self._pool,  # type: ignore[arg-type]
            )
        else:
            self.storage = MemoryStorage()
        self._strategy = MovingWindowRateLimiter(self.storage)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()

    async def hit(self, item: RateLimitItem, *keys: str) -> Verdict:
        allowed = await self._strategy.hit(item, *keys)
        stats = await self._strategy.get_window_stats(item, *keys)
        return Verdict(allowed, item.amount, stats.remaining, stats.reset_time)

    async def blocked(self, item: RateLimitItem, scope: str, key: str, now: float) -> None:
        """Raise RateLimited if `key` has no hits left, without spending one."""
        if not await self._strategy.test(item, scope, key):
            stats = await self._strategy.get_window_stats(item, scope, key)
            verdict = Verdict(False, item.amount, stats.remaining, stats.reset_time)
            raise RateLimited(headers=verdict.headers(scope, now))

    async def enforce(self, item: RateLimitItem, scope: str, key: str, now: float) -> None:
        verdict = await self.hit(item, scope, key)
        if not verdict.allowed:
            raise RateLimited(headers=verdict.headers(scope, now))
