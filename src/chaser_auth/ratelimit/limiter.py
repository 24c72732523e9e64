"""Rate limits as moving windows: shared through Redis with the `limits` library when
`CHASER_AUTH_REDIS_URL` is set (redis-py implementation), else in this process's memory
(`LocalMovingWindow`).

A Redis outage never turns into an error for the client. Every limit then falls back to this
process's own memory — it still holds, per process instead of in sum — and Redis is tried again
`REDIS_RETRY` seconds later; the switch is logged once each way. Failing open (no limits) would
hand an attacker unlimited guesses and inbox flooding for as long as Redis is down; failing
closed (refusing every request) would lock every person out of their account. Redis calls
time out after `REDIS_TIMEOUT`, so a hung server costs a request that long at most, once per
retry period.

Keys never hold an address: callers pass a keyed hash (`tokens.keyed_hash`)."""

from __future__ import annotations

import bisect
import logging
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from limits import RateLimitItem, WindowStats
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from chaser_auth import metrics
from chaser_auth.errors import RateLimited

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool

REDIS_RETRY = 5.0
REDIS_TIMEOUT = 2.0
REDIS_CONNECTIONS = 100
SWEEP_EVERY = 10.0
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


class MovingWindow(Protocol):
    """The part of `limits`' moving-window strategy that `Limiter` asks."""

    async def hit(self, item: RateLimitItem, *identifiers: str, cost: int = 1) -> bool: ...

    async def test(self, item: RateLimitItem, *identifiers: str, cost: int = 1) -> bool: ...

    async def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats: ...

    async def clear(self, item: RateLimitItem, *identifiers: str) -> None: ...


class LocalMovingWindow:
    """An exact moving window in this process's memory, with `limits`' strategy interface.

    Why not `limits`' own `MemoryStorage` (aio): every hit restarts, if it has finished, a pass
    over every key that makes an `asyncio.to_thread` call per key, so under steady load from
    many clients the pass never stops and its thread hops cost the event loop more than the
    requests themselves (its sync storage sweeps every key from a timer thread every 10 ms);
    and it keeps a Python object per hit. Here a key keeps the times of its hits within the
    window, oldest first, 8 bytes each (`_Hits`); a hit is allowed when fewer than `amount`
    lie within the window — the same rule as `limits`' moving window. Keys whose last hit left
    its window are dropped by a sweep at most every `SWEEP_EVERY` seconds. One event loop owns
    it; no locks needed."""

    def __init__(self) -> None:
        self._hits: dict[tuple[int, int, tuple[str, ...]], _Hits] = {}
        self._next_sweep = 0.0

    async def hit(self, item: RateLimitItem, *identifiers: str, cost: int = 1) -> bool:
        now = time.time()
        if now >= self._next_sweep:
            self._sweep(now)
        key = (item.amount, item.get_expiry(), identifiers)
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = _Hits()
        if hits.inside(now - item.get_expiry()) + cost > item.amount:
            return False
        hits.times.extend([now] * cost)
        return True

    async def test(self, item: RateLimitItem, *identifiers: str, cost: int = 1) -> bool:
        hits = self._hits.get((item.amount, item.get_expiry(), identifiers))
        inside = hits.inside(time.time() - item.get_expiry()) if hits else 0
        return inside + cost <= item.amount

    async def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        now = time.time()
        hits = self._hits.get((item.amount, item.get_expiry(), identifiers))
        inside = hits.inside(now - item.get_expiry()) if hits else 0
        # the window starts at its oldest hit (`limits` reports an empty one as starting now)
        window_start = hits.times[hits.start] if hits and inside else now
        return WindowStats(window_start + item.get_expiry(), item.amount - inside)

    async def clear(self, item: RateLimitItem, *identifiers: str) -> None:
        self._hits.pop((item.amount, item.get_expiry(), identifiers), None)

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + SWEEP_EVERY
        gone = [key for key, hits in self._hits.items() if hits.inside(now - key[1]) == 0]
        for key in gone:
            del self._hits[key]


class _Hits:
    """One key's hit times, oldest first: `times[start:]`; those before `start` have left the
    window and wait to be cut off (done once they are half the array, so cutting costs O(1)
    per hit, amortised)."""

    __slots__ = ("start", "times")

    def __init__(self) -> None:
        self.times = array("d")
        self.start = 0

    def inside(self, since: float) -> int:
        """How many hits are at or after `since`, forgetting those before it."""
        cut = bisect.bisect_left(self.times, since, self.start)
        if cut > self.start:
            self.start = cut
            if cut * 2 > len(self.times):
                del self.times[:cut]
                self.start = 0
        return len(self.times) - self.start


class Limiter:
    def __init__(self, redis_url: str | None, key_prefix: str = "chaser-auth") -> None:
        self._memory: MovingWindow = LocalMovingWindow()
        self._shared: MovingWindow | None = None
        # We own the connection pool so that shutdown can close it (the storage has no close).
        self._pool: ConnectionPool | None = None
        if redis_url:
            # Imported only when used: a process without Redis saves its memory.
            from redis.asyncio import BlockingConnectionPool

            # Blocking: a burst of more concurrent requests than the pool has connections
            # waits (up to REDIS_TIMEOUT) for one to come free. The default pool refuses at
            # once instead, and every such refusal would drop the limits to process memory —
            # a burst of guesses would slip past the shared per-account count.
            self._pool = BlockingConnectionPool.from_url(
                redis_url,
                max_connections=REDIS_CONNECTIONS,
                timeout=REDIS_TIMEOUT,
                socket_timeout=REDIS_TIMEOUT,
                socket_connect_timeout=REDIS_TIMEOUT,
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

    async def _ask(self, call: Callable[[MovingWindow], Awaitable[T]]) -> T:
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
        async def ask(strategy: MovingWindow) -> Verdict:
            if await strategy.hit(item, *keys):
                return Verdict(True, item.amount)
            stats = await strategy.get_window_stats(item, *keys)
            return Verdict(False, item.amount, stats.remaining, stats.reset_time)

        return await self._ask(ask)

    async def blocked(self, item: RateLimitItem, scope: str, key: str, now: float) -> None:
        """Raise RateLimited if `key` has no hits left, without spending one."""

        async def ask(strategy: MovingWindow) -> Verdict | None:
            if await strategy.test(item, scope, key):
                return None
            stats = await strategy.get_window_stats(item, scope, key)
            return Verdict(False, item.amount, stats.remaining, stats.reset_time)

        verdict = await self._ask(ask)
        if verdict is not None:
            metrics.LIMITED.labels(scope).inc()
            raise RateLimited(headers=verdict.headers(scope, now))

    async def clear(self, item: RateLimitItem, scope: str, key: str) -> None:
        """Forget `key`'s hits: its window starts again empty."""

        async def ask(strategy: MovingWindow) -> None:
            await strategy.clear(item, scope, key)

        await self._ask(ask)

    async def enforce(self, item: RateLimitItem, scope: str, key: str, now: float) -> None:
        verdict = await self.hit(item, scope, key)
        if not verdict.allowed:
            metrics.LIMITED.labels(scope).inc()
            raise RateLimited(headers=verdict.headers(scope, now))
