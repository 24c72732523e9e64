"""Real services for the tests: an SMTP server (aiosmtpd) that keeps what it receives, an
injectable clock, and the app served over a real socket by uvicorn in the test's event loop.

Tests that need something a fresh machine may lack (node, PostgreSQL, Chromium…) call
`require(...)`: it skips with the reason, or fails when CHASER_AUTH_TEST_STRICT=1 (set by
`.ci/run`), so CI never silently skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import os
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from aiosmtpd.controller import Controller

from chaser_auth.app import create_app
from chaser_auth.config import Settings
from chaser_auth.runtime import Runtime
from chaser_auth.store import migrate
from chaser_auth.store.tables import OutboxMessage

STRICT = os.environ.get("CHASER_AUTH_TEST_STRICT") == "1"
LINK = re.compile(r"(http://[^\s\"<>]+)/reset-password#token=([A-Za-z0-9_-]{43,})")
PASSWORD = "correct horse battery staple 7"
NEW_PASSWORD = "a much better passphrase, 2026"


def require(condition: object, reason: str) -> None:
    if condition:
        return
    if STRICT:
        pytest.fail(f"required by CHASER_AUTH_TEST_STRICT=1: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- SMTP ---------------------------------------------------------------------------------------


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage

    def text(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None
        return str(part.get_content())  # type: ignore[attr-defined]

    def html(self) -> str:
        part = self.message.get_body(("html",))
        assert part is not None
        return str(part.get_content())  # type: ignore[attr-defined]

    def link(self) -> tuple[str, str]:
        """(link, token) of the reset link in the text part."""
        found = LINK.search(self.text())
        assert found, "no reset link in the message"
        return found.group(0), found.group(2)


@dataclass
class SmtpSink:
    """aiosmtpd handler: accepts every message, or refuses with `fail_with` while it is set."""

    messages: list[Received] = field(default_factory=list)
    refused: list[Received] = field(default_factory=list)
    fail_with: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        received = Received(envelope.mail_from, list(envelope.rcpt_tos), parsed)
        with self.lock:
            (self.refused if self.fail_with else self.messages).append(received)
        return self.fail_with or "250 OK"

    def to(self, address: str) -> list[Received]:
        with self.lock:
            wanted = address.strip().lower()
            return [m for m in self.messages if wanted in (r.lower() for r in m.recipients)]

    async def wait_for(
        self, count: int, timeout: float = 10.0, *, to: str | None = None
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.to(to) if to else list(self.messages)
            if len(got) >= count or time.monotonic() > deadline:
                return got
            await asyncio.sleep(0.02)


@dataclass
class Smtp:
    sink: SmtpSink
    port: int

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"


@pytest.fixture
def smtp() -> Iterator[Smtp]:
    sink = SmtpSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield Smtp(sink, port)
    finally:
        controller.stop()


# -- clock and settings -------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/auth.db",
        "secret_key": "test-secret-key-with-enough-entropy-0123456789",
        "secret_key_file": tmp_path / "secret_key",
        "mail_dir": tmp_path / "mail",
        "argon2_time_cost": 1,
        "argon2_memory_cost": 1024,
        "argon2_parallelism": 1,
        "worker_poll_interval": 0.05,
        "mail_retry_base": 0.05,
        "mail_retry_max": 0.2,
        "rate_limit_reset_per_ip": "1000/minute",
    }
    values.update(overrides)
    # `_env_file=None` and explicit values: nothing from the machine's environment leaks in.
    return Settings(_env_file=None, **values)


# -- the app over a real socket -----------------------------------------------------------------


@dataclass
class Served:
    url: str
    client: httpx.AsyncClient
    clock: FakeClock
    settings: Settings
    runtime: Runtime
    smtp: Smtp | None

    async def create_user(self, email: str, password: str = PASSWORD) -> str:
        user = await self.runtime.accounts.create(email, password)
        return str(user.id)

    async def request_reset(self, email: str, **kw: Any) -> httpx.Response:
        return await self.client.post("/auth/password-reset/request", json={"email": email}, **kw)

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until the worker has handled every queued outbox row."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            async with self.runtime.store.tx() as tx:
                if await tx.outbox.depth() == 0:
                    return
            await asyncio.sleep(0.02)
        raise AssertionError("the outbox did not drain")

    async def outbox_until(
        self, predicate: Callable[[list[OutboxMessage]], bool], timeout: float = 10.0
    ) -> list[OutboxMessage]:
        """Poll the outbox until `predicate` holds, moving the clock on a second per poll so
        that backed-off retries fall due without real waiting."""
        deadline = time.monotonic() + timeout
        while True:
            async with self.runtime.store.tx() as tx:
                rows = list(await tx.outbox.listing())
            if predicate(rows):
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"outbox never reached the expected state: {rows}")
            self.clock.advance(1)
            self.runtime.wake.set()
            await asyncio.sleep(0.02)

    async def reset_link(self, email: str, *, expect: int = 1) -> tuple[str, str]:
        """Ask for a reset for `email` and return (link, token) of the newest message."""
        assert self.smtp is not None
        before = len(self.smtp.sink.to(email.strip().lower()))
        response = await self.request_reset(email)
        assert response.status_code == 200
        got = await self.smtp.sink.wait_for(before + expect, to=email.strip().lower())
        assert len(got) == before + expect, "the reset email did not arrive"
        return got[-1].link()


def bound_socket() -> socket.socket:
    """A listening-ready socket on a free port: bind first when the settings need the URL
    (`public_url`), then hand it to `serve`."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def socket_url(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.asynccontextmanager
async def serve(
    settings: Settings,
    clock: FakeClock,
    smtp: Smtp | None,
    sock: socket.socket | None = None,
) -> AsyncIterator[Served]:
    await asyncio.to_thread(migrate.upgrade, settings.database_url)
    app = create_app(settings, clock)
    with sock or bound_socket() as sock:
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="on", proxy_headers=False
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
            url = socket_url(sock)
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                yield Served(url, client, clock, settings, app.state.runtime, smtp)
        finally:
            server.should_exit = True
            await task


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def app(tmp_path: Path, smtp: Smtp, clock: FakeClock) -> AsyncIterator[Served]:
    async with serve(make_settings(tmp_path, smtp_url=smtp.url), clock, smtp) as served:
        yield served
