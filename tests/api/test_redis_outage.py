"""A Redis outage under CHASER_AUTH_REDIS_URL: every limit falls back to the process's memory
(never a 500, never unlimited), the switch is logged once each way, and the counts are shared
again once Redis answers.

The outage is real: each test runs a private `redis-server` on a free port and kills it with
SIGKILL mid-test (or points at a port where nothing listens)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chaser_auth.api.reset import REQUESTED_BODY
from chaser_auth.api.signup import REGISTERED_BODY
from chaser_auth.ratelimit.limiter import REDIS_RETRY
from tests.conftest import FakeClock, Served, Smtp, free_port, make_settings, require, serve

LOGGER = "chaser_auth.ratelimit"
DOWN = "Redis unavailable"
BACK = "Redis answers again"
RATELIMIT_HEADERS = (
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-scope",
)


class RedisProcess:
    """A private redis-server on one port: started, killed (SIGKILL) and started again."""

    def __init__(self, binary: str, port: int, workdir: Path) -> None:
        self.binary = binary
        self.port = port
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pings(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self, timeout: float = 10.0) -> None:
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not self.pings():
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise AssertionError(f"redis-server on port {self.port} exited with {code}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"redis-server on port {self.port} never answered PING")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is None:
            return
        self.process.kill()  # SIGKILL: no goodbye to the clients, like a crash
        self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A running private redis-server, always killed at the end."""
    binary = shutil.which("redis-server")
    require(binary, "no redis-server on PATH (needed to inject a real Redis outage)")
    assert binary is not None
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisProcess(binary, free_port(), workdir)
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture
def prefix() -> str:
    return f"chaser-test-{secrets.token_hex(6)}"


@pytest.fixture
def dead_redis_url() -> str:
    """A Redis URL where nothing listens."""
    return f"redis://127.0.0.1:{free_port()}/0"


def logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(
        1
        for record in caplog.records
        if record.name == LOGGER and record.levelno == logging.WARNING and text in record.message
    )


def client_address() -> str:
    """A client address of this test's own (documentation range, random /64)."""
    return f"2001:db8:{secrets.randbelow(0xFFFF):x}:{secrets.randbelow(0xFFFF):x}::1"


def assert_rate_limited(response: httpx.Response, scope: str, limit: int) -> None:
    assert response.status_code == 429
    assert response.json() == {
        "error": {
            "code": "rate_limited",
            "message": "Too many requests. Try again later.",
            "details": [],
        }
    }
    assert int(response.headers["retry-after"]) >= 1
    for header in RATELIMIT_HEADERS:
        assert header in response.headers, header
    assert response.headers["x-ratelimit-limit"] == str(limit)
    assert response.headers["x-ratelimit-remaining"] == "0"
    assert response.headers["x-ratelimit-scope"] == scope
    assert int(response.headers["x-ratelimit-reset"]) >= int(time.time())


# -- 1. the per-IP limit holds through the outage ------------------------------------------------


async def test_per_ip_limit_keeps_holding_in_memory_when_redis_dies(
    tmp_path: Path,
    smtp: Smtp,
    clock: FakeClock,
    redis_server: RedisProcess,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    settings = make_settings(
        tmp_path,
        smtp_url=smtp.url,
        redis_url=redis_server.url,
        redis_key_prefix=prefix,
        rate_limit_reset_per_ip="3/minute",
    )
    async with serve(settings, clock, smtp) as app:
        for _ in range(2):
            response = await app.request_reset("nobody@example.com")
            assert response.status_code == 200
            assert response.content == REQUESTED_BODY
        assert logged(caplog, DOWN) == 0

        redis_server.kill()
        answers = [await app.request_reset("nobody@example.com") for _ in range(6)]

    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 429}, statuses  # never a 5xx
    assert 429 in statuses[:4], statuses  # the limit still holds, in this process's memory
    assert {a.content for a in answers if a.status_code == 200} == {REQUESTED_BODY}
    for answer in answers:
        if answer.status_code == 429:
            assert_rate_limited(answer, "ip", 3)
    assert logged(caplog, DOWN) == 1  # once for the outage, not once per request
    assert logged(caplog, BACK) == 0


# -- 2. Redis comes back: shared counts again ----------------------------------------------------


async def test_limits_are_shared_again_once_redis_answers_again(
    tmp_path: Path,
    smtp: Smtp,
    clock: FakeClock,
    redis_server: RedisProcess,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    common: dict[str, Any] = {
        "smtp_url": smtp.url,
        "redis_url": redis_server.url,
        "redis_key_prefix": prefix,
        "rate_limit_reset_per_ip": "3/minute",
        "trusted_proxies": "127.0.0.1",
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()

    async def statuses(apis: tuple[Served, ...], client: str) -> list[int]:
        headers = {"X-Forwarded-For": client}
        return [
            (await api.request_reset("nobody@example.com", headers=headers)).status_code
            for api in apis
        ]

    async with (
        serve(make_settings(tmp_path / "a", **common), clock, smtp) as first,
        serve(make_settings(tmp_path / "b", **common), clock, smtp) as second,
    ):
        # shared while Redis is up
        assert await statuses((first, second, first, second), client_address()) == [
            200,
            200,
            200,
            429,
        ]

        # the outage: each process falls back to its own memory, and says so once
        redis_server.kill()
        during = client_address()
        assert await statuses((first, second, first, second), during) == [200, 200, 200, 200]
        assert logged(caplog, DOWN) == 2
        assert logged(caplog, BACK) == 0

        # Redis is back (empty: no persistence); the processes ask it again after REDIS_RETRY
        redis_server.start()
        await asyncio.sleep(REDIS_RETRY + 0.5)
        assert await statuses((first, second, first, second), client_address()) == [
            200,
            200,
            200,
            429,
        ]
    assert logged(caplog, BACK) == 2  # once per process
    assert logged(caplog, DOWN) == 2


# -- 3. login throttle and register limit with Redis dead from the start -------------------------


async def test_login_throttle_and_register_limit_hold_without_redis(
    tmp_path: Path,
    smtp: Smtp,
    clock: FakeClock,
    dead_redis_url: str,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    settings = make_settings(
        tmp_path,
        smtp_url=smtp.url,
        redis_url=dead_redis_url,
        redis_key_prefix=prefix,
        rate_limit_login="3/minute",
        rate_limit_register_per_ip="2/hour",
    )
    async with serve(settings, clock, smtp) as app:
        await app.create_user("frank@example.com")
        logins = [
            await app.client.post(
                "/auth/login",
                json={"email": "frank@example.com", "password": "not the password!!"},
            )
            for _ in range(4)
        ]
        registers = [
            await app.client.post(
                "/auth/register",
                json={"email": f"new{i}@example.com", "password": "a long enough passphrase 1"},
            )
            for i in range(3)
        ]

    assert [r.status_code for r in logins] == [401, 401, 401, 429]
    for response in logins[:3]:
        assert response.json()["error"]["code"] == "invalid_credentials"
    assert_rate_limited(logins[3], "login", 3)

    assert [r.status_code for r in registers] == [202, 202, 429]
    assert {r.content for r in registers[:2]} == {REGISTERED_BODY}
    assert_rate_limited(registers[2], "register-ip", 2)

    assert logged(caplog, DOWN) == 1


# -- 4. the worker's per-address limit with Redis dead from the start ----------------------------


async def test_worker_per_address_limit_holds_without_redis(
    tmp_path: Path,
    smtp: Smtp,
    clock: FakeClock,
    dead_redis_url: str,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    settings = make_settings(
        tmp_path, smtp_url=smtp.url, redis_url=dead_redis_url, redis_key_prefix=prefix
    )
    async with serve(settings, clock, smtp) as app:
        await app.create_user("busy@example.com")
        answers = [await app.request_reset("busy@example.com") for _ in range(5)]
        assert {a.status_code for a in answers} == {200}
        assert {a.content for a in answers} == {REQUESTED_BODY}
        await app.settle()
        async with app.runtime.store.tx() as tx:
            rows = list(await tx.outbox.listing())

    allowed = settings.limit("rate_limit_reset_per_address").amount
    assert allowed == 3
    assert len(smtp.sink.to("busy@example.com")) == allowed
    assert smtp.sink.refused == []
    assert [row.status for row in rows] == ["done"] * 5  # none dead
    assert sorted(str(row.outcome) for row in rows) == ["sent"] * 3 + ["suppressed"] * 2
    assert logged(caplog, DOWN) == 1
