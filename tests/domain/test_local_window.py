"""`ratelimit.limiter.LocalMovingWindow`, the in-memory moving window, decides as `limits`' own
moving window does (its `MemoryStorage` is the reference here), and forgets what has left
its window."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from chaser_auth.ratelimit import limiter
from chaser_auth.ratelimit.limiter import LocalMovingWindow


async def test_same_decisions_as_limits_moving_window(monkeypatch: pytest.MonkeyPatch) -> None:
    # Both read time.time(); a clock of our own moves it on by 0-400 ms per call, so windows
    # fill, slide and empty within the run.
    clock = [1_800_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    ours = LocalMovingWindow()
    reference = MovingWindowRateLimiter(MemoryStorage())
    items = [parse("1/second"), parse("3/second"), parse("4 per 2 seconds"), parse("5/minute")]
    rng = random.Random(6)
    decisions = []
    for _ in range(3000):
        clock[0] += rng.choice((0.0, 0.0, 0.001, 0.05, 0.4))
        item = rng.choice(items)
        keys = ("ip", f"198.51.100.{rng.randrange(20)}")
        cost = rng.choice((1, 1, 1, 2))
        if rng.random() < 0.2:
            ask = (
                await ours.test(item, *keys, cost=cost),
                await reference.test(item, *keys, cost=cost),
            )
        else:
            ask = (
                await ours.hit(item, *keys, cost=cost),
                await reference.hit(item, *keys, cost=cost),
            )
        assert ask[0] == ask[1], (item, keys, cost)
        decisions.append(ask[0])
        ours_stats = await ours.get_window_stats(item, *keys)
        reference_stats = await reference.get_window_stats(item, *keys)
        assert ours_stats.remaining == reference_stats.remaining
        if ours_stats.remaining < item.amount:
            # (for an empty window `limits` names the start of its oldest expired entry)
            assert ours_stats.reset_time == reference_stats.reset_time
    assert True in decisions and False in decisions  # both answers were exercised


async def test_a_window_moves_and_old_keys_are_swept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limiter, "SWEEP_EVERY", 0.0)  # every hit sweeps
    window = LocalMovingWindow()
    item = parse("2/second")
    assert await window.hit(item, "ip", "a")
    assert await window.hit(item, "ip", "a")
    assert not await window.hit(item, "ip", "a")
    assert not await window.test(item, "ip", "a")
    assert await window.hit(item, "ip", "b")  # another key counts apart
    stats = await window.get_window_stats(item, "ip", "a")
    assert stats.remaining == 0
    await asyncio.sleep(1.05)
    assert await window.test(item, "ip", "a")
    assert await window.hit(item, "ip", "a")
    assert (await window.get_window_stats(item, "ip", "a")).remaining == 1
    await asyncio.sleep(1.05)
    assert await window.hit(item, "ip", "c")  # this hit sweeps: a and b have left the window
    assert [key[2] for key in window._hits] == [("ip", "c")]
