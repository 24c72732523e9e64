"""CHASER_AUTH_REDIS_URL: the per-IP limit is one budget across every API process."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

from tests.conftest import FakeClock, Smtp, make_settings, require, serve

REDIS = ("127.0.0.1", 6379)


def redis_answers() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


async def test_two_api_instances_share_one_per_ip_budget_through_redis(
    tmp_path: Path, smtp: Smtp, clock: FakeClock
) -> None:
    require(redis_answers(), "no Redis server on 127.0.0.1:6379")
    # A client address of its own for this run (documentation range, random /64), so runs
    # that share the Redis server never share a budget.
    client = f"2001:db8:{secrets.randbelow(0xFFFF):x}:{secrets.randbelow(0xFFFF):x}::1"
    common = {
        "smtp_url": smtp.url,
        "redis_url": f"redis://{REDIS[0]}:{REDIS[1]}/0",
        "rate_limit_reset_per_ip": "3/minute",
        "trusted_proxies": "127.0.0.1",
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        serve(make_settings(tmp_path / "a", **common), clock, smtp) as first,
        serve(make_settings(tmp_path / "b", **common), clock, smtp) as second,
    ):
        statuses = [
            (
                await api.request_reset("s@example.com", headers={"X-Forwarded-For": client})
            ).status_code
            for api in (first, second, first, second)
        ]
    assert statuses == [200, 200, 200, 429]
