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

import logging
import time
from collections import deque
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
REDIS_TIMEOUT = 0.5
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


class LocalMovingWindow:
    """An exact moving window in this process's memory, with `limits`' strategy interface.

    Why not `limits`' own `MemoryStorage` (aio): every hit restarts, if it has finished, a pass
    over every key that makes an `asyncio.to_thread` call per key, so under steady load from
    many clients the pass never stops and its thread hops cost the event loop more than the
    requests themselves (its sync storage sweeps every key from a timer thread every 10 ms).
    Here a key keeps only the times of its last `amount` hits (a hit is allowed when fewer than
    `amount` of them lie within the window, i.e. when the oldest of them is outside it — the
    same rule as `limits`' moving window), and keys whose last hit left its window are dropped
    by a sweep at most every `SWEEP_EVERY` seconds. One event loop owns it; no locks needed."""

    def __init__(self) -> None:
        self._hits: dict[tuple[int, int, tuple[str, ...]], deque[float]] = {}
        self._next_sweep = 0.0

    async def hit(self, item: RateLimitItem, *identifiers: str, cost: int = 1) -> bool:
        now = time.time()
        if now >= self._next_sweep:
            self._sweep(now)
        key = (item.amount, item.get_expiry(), identifiers)
        recent = self._hits.get(key)
        if recent is None:
            if cost > item.amount:
                return False
            recent = self._hits[key] = deque(maxlen=item.amount)
        elif not _room(recent, item, cost, now):
            return False
        recent.extend([now] * cost)
        return True

    async def test(self, item: RateLimitItem, *identifiers: str, cost: int = 1) -> bool:
        recent = self._hits.get((item.amount, item.get_expiry(), identifiers), deque())
        return _room(recent, item, cost, time.time())

    async def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        now = time.time()
        start = now - item.get_expiry()
        recent = self._hits.get((item.amount, item.get_expiry(), identifiers), deque())
        inside = [at for at in recent if at >= start]
        window_start = inside[0] if inside else now  # as `limits` reports an empty window
        return WindowStats(window_start + item.get_expiry(), item.amount - len(inside))

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + SWEEP_EVERY
        gone = [key for key, recent in self._hits.items() if recent[-1] <= now - key[1]]
        for key in gone:
            del self._hits[key]


def _room(recent: deque[float], item: RateLimitItem, cost: int, now: float) -> bool:
    """Whether `cost` more hits fit: the hits within the window (a newest-last suffix of
    `recent`) plus `cost` must not exceed `amount`."""
    if cost > item.amount:
        return False
    full = item.amount - cost + 1  # this many hits inside the window leave no room
    return len(recent) < full or recent[-full] < now - item.get_expiry()


class Limiter:
    def __init__(self, redis_url: str | None, key_prefix: str = "chaser-auth") -> None:
        self._memory: MovingWindow = LocalMovingWindow()
        self._shared: MovingWindow | None = None
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

    async def enforce(self, item: RateLimitItem, scope: str, key: str, now: float) -> None:
        verdict = await self.hit(item, scope, key)
        if not verdict.allowed:
            metrics.LIMITED.labels(scope).inc()
            raise RateLimited(headers=verdict.headers(scope, now))
