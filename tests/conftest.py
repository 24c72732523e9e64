"""Real services for the tests: an SMTP server (aiosmtpd) that keeps what it receives, an
injectable clock, and the app served over a real socket by uvicorn in the test's event loop.

Tests that need something a fresh machine may lack (node, PostgreSQL, Chromium…) call
`require(...)`: it skips with the reason, or fails when CHASER_AUTH_TEST_STRICT=1 (set by
`.ci/run`), so CI never silently skips.

Backends: a test module sets `BACKENDS` to the (database, limits) pairs its tests run on —
("sqlite", "memory") when it does not say — and its `app` and `database_url` fixtures follow.
On PostgreSQL every test gets a database of its own, copied from a migrated template that this
run's worker created (so runs and parallel workers never collide, and each test starts empty);
on Redis every test gets a key prefix of its own. Both are dropped when the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import itertools
import os
import re
import secrets
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from aiosmtpd.controller import Controller
from limits import parse
from sqlalchemy import select

from chaser_auth.app import create_app
from chaser_auth.config import Settings
from chaser_auth.runtime import Runtime
from chaser_auth.store import migrate
from chaser_auth.store.tables import Base, OutboxMessage

STRICT = os.environ.get("CHASER_AUTH_TEST_STRICT") == "1"
POSTGRES = os.environ.get(
    "CHASER_AUTH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS = os.environ.get("CHASER_AUTH_TEST_REDIS", "redis://127.0.0.1:6379/0")
# Every pair a module may ask for; the ids name the backends in test ids.
EMBEDDED = ("sqlite", "memory")
SCALED = ("postgresql", "redis")
EVERY_BACKEND = (EMBEDDED, SCALED)
LINK = re.compile(r"(http://[^\s\"<>]+)/reset-password#token=([A-Za-z0-9_-]{43,})")
PASSWORD = "correct horse battery staple 7"
NEW_PASSWORD = "a much better passphrase, 2026"

# One TLS context for every HTTP client the tests make: httpx would load the CA bundle anew for
# each client (about 20 ms of CPU), and the tests make thousands — two per served app, one per
# poll of /healthz. They all speak plain HTTP to loopback; httpx takes a context to reuse as
# `verify=`.
TLS = ssl.create_default_context()


def require(condition: object, reason: str) -> None:
    if condition:
        return
    if STRICT:
        pytest.fail(f"required by CHASER_AUTH_TEST_STRICT=1: {reason}")
    pytest.skip(reason)


def answers(url: str, default_port: int) -> bool:
    """Something accepts TCP connections where `url` points."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every test a node id of its own. pytest-xdist hands tests to its workers by node
    id, and runs one test per id: Schemathesis names every operation of a parametrized test
    alike (`…::test_served_api_with_a_session`), so all but one of them would not run."""
    for item in items:
        if item.nodeid.rpartition("::")[2] != item.name and item.parent is not None:
            item._id = item.parent.id.child(item.name)  # as pytest names any other item
    seen = Counter(item.nodeid for item in items)
    doubled = sorted(nodeid for nodeid, count in seen.items() if count > 1)
    if doubled:
        raise pytest.UsageError(f"tests with the same node id (xdist would run one): {doubled}")


# -- SMTP ---------------------------------------------------------------------------------------


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage
    peer: Any = None  # the client's (address, port): one per SMTP connection

    def text(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None
        return str(part.get_content())

    def html(self) -> str:
        part = self.message.get_body(("html",))
        assert part is not None
        return str(part.get_content())

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

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if envelope.smtp_utf8:  # RFC 6532: the headers may hold UTF-8
            parsed = email.message_from_string(
                envelope.content.decode("utf-8"), policy=email.policy.default
            )
        else:
            parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        received = Received(envelope.mail_from, list(envelope.rcpt_tos), parsed, session.peer)
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


@contextlib.contextmanager
def smtp_server() -> Iterator[Smtp]:
    """An aiosmtpd server on a free port of 127.0.0.1, in a thread of its own."""
    sink = SmtpSink()
    port = free_port()
    # aiosmtpd's Controller offers SMTPUTF8, as today's relays do (Postfix, Gmail).
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield Smtp(sink, port)
    finally:
        controller.stop()


@pytest.fixture
def smtp() -> Iterator[Smtp]:
    with smtp_server() as server:
        yield server


# -- clock and settings -------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


# -- backends -----------------------------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        pairs = getattr(metafunc.module, "BACKENDS", (EMBEDDED,))
        metafunc.parametrize("backend", pairs, ids=["-".join(pair) for pair in pairs])


class Postgres:
    """This run's databases on the PostgreSQL server at CHASER_AUTH_TEST_POSTGRES.

    Copying the template and dropping a database each take the server most of a second, most
    of it waiting on the disk: so the next migrated database is copied while a test runs, and
    a finished test's database is dropped while the next one runs (all are gone by the end of
    the session)."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.prefix = f"chaser_test_{os.getpid()}_{secrets.token_hex(3)}"
        self.template = f"{self.prefix}_template"
        self.created: list[str] = []
        self._numbers = itertools.count(1)  # next() is atomic: names from two threads differ
        self._background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="postgres")
        self._next: Future[str] | None = None
        self._drops: list[Future[None]] = []
        self._copy = ""  # how the template is copied: see `start`

    def url(self, name: str) -> str:
        parts = urlsplit(self.admin_url)
        return parts._replace(scheme="postgresql+asyncpg", path=f"/{name}").geturl()

    async def _admin(self, *statements: str) -> None:
        import asyncpg  # type: ignore[import-untyped]

        connection = await asyncpg.connect(self.admin_url)
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    def _new(self, *, migrated: bool) -> str:
        name = f"{self.prefix}_{next(self._numbers)}"
        self.created.append(name)
        template = f" TEMPLATE {self.template}{self._copy}" if migrated else ""
        asyncio.run(self._admin(f'CREATE DATABASE "{name}"{template}'))
        return self.url(name)

    def create(self, *, migrated: bool = True) -> str:
        """A new database: empty, or a copy of the migrated template."""
        if not migrated:
            return self._new(migrated=False)
        if self._next is None:
            self._next = self._background.submit(self._new, migrated=True)
        url = self._next.result()
        self._next = self._background.submit(self._new, migrated=True)
        return url

    def _drop(self, name: str) -> None:
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def drop(self, url: str) -> None:
        """Drop a database that `create` made (whoever is still connected is cut off)."""
        name = urlsplit(url).path.lstrip("/")
        assert name in self.created and name != self.template
        self.created.remove(name)
        self._drops.append(self._background.submit(self._drop, name))

    @contextlib.contextmanager
    def database(self, *, migrated: bool = True) -> Iterator[str]:
        """The URL of a new database (see `create`), dropped on leaving."""
        url = self.create(migrated=migrated)
        try:
            yield url
        finally:
            self.drop(url)

    async def _version(self) -> int:
        import asyncpg

        connection = await asyncpg.connect(self.admin_url)
        try:
            return int(await connection.fetchval("SHOW server_version_num"))
        finally:
            await connection.close()

    def start(self) -> None:
        # From PostgreSQL 15 on, a database is copied through the WAL by default, page by
        # page; copying the template's few files costs the server about 40 % less CPU.
        if asyncio.run(self._version()) >= 150000:
            self._copy = " STRATEGY FILE_COPY"
        asyncio.run(self._admin(f'CREATE DATABASE "{self.template}"'))
        self.created.append(self.template)
        migrate.upgrade(self.url(self.template))

    def drop_all(self) -> None:
        if self._next is not None:
            self._next.exception()  # created or not, it is in `created`
        for dropping in self._drops:
            dropping.result()
        self._background.shutdown()
        # The template last: no copy of it may be under way.
        drops = [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in self.created[::-1]]
        asyncio.run(self._admin(*drops))


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    require(answers(POSTGRES, 5432), f"no PostgreSQL server at {POSTGRES}")
    server = Postgres(POSTGRES)
    server.start()
    try:
        yield server
    finally:
        server.drop_all()


@pytest.fixture
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, backend: tuple[str, str]
) -> Iterator[str]:
    """A fresh, migrated database on the backend under test, dropped when the test ends."""
    if backend[0] == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/auth.db"
        return
    server: Postgres = request.getfixturevalue("postgres")
    with server.database() as url:
        yield url


@pytest.fixture
def limit_settings(backend: tuple[str, str]) -> Iterator[dict[str, Any]]:
    """Settings for the limits backend under test: none (process memory), or Redis under a
    key prefix of this test's own, whose keys are deleted afterwards."""
    if backend[1] == "memory":
        yield {}
        return
    require(answers(REDIS, 6379), f"no Redis server at {REDIS}")
    prefix = f"chaser-test-{secrets.token_hex(6)}"
    yield {"redis_url": REDIS, "redis_key_prefix": prefix}
    asyncio.run(_delete_keys(prefix))


async def _delete_keys(prefix: str) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(REDIS)
    try:
        async for key in client.scan_iter(match=f"{prefix}*"):
            await client.delete(key)
    finally:
        await client.aclose()


def default_budgets() -> dict[str, str]:
    """The login and token budgets at their default amounts, each counted over an hour rather
    than its default window: a test on a slow, loaded machine whose requests spread over more
    than a minute would otherwise see the oldest hits leave the window mid-test."""
    budgets = {}
    for name in (
        "rate_limit_login_per_ip",
        "rate_limit_login_per_account",
        "rate_limit_token_per_ip",
    ):
        amount = parse(str(Settings.model_fields[name].default)).amount
        budgets[name] = f"{amount}/hour"
    return budgets


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
        # Tests make many logins and token tries from 127.0.0.1; the modules that prove these
        # budgets set them back to their default amounts (`default_budgets`).
        "rate_limit_login_per_ip": "1000/minute",
        "rate_limit_login_per_account": "1000/minute",
        "rate_limit_token_per_ip": "1000/minute",
        "operator_address": "127.0.0.1:0",  # a free port of its own: parallel runs never meet
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
    operator: httpx.AsyncClient | None = None  # the operator listener, when it is on

    async def create_user(self, email: str, password: str = PASSWORD) -> str:
        user = await self.runtime.accounts.create(email, password)
        return str(user.id)

    def client_from(self, address: str) -> httpx.AsyncClient:
        """A client of its own whose connections come from `address`: distinct loopback
        addresses (127.0.0.2, 127.0.0.3 …) stand for distinct hosts."""
        transport = httpx.AsyncHTTPTransport(local_address=address)
        return httpx.AsyncClient(base_url=self.url, transport=transport, timeout=30, verify=TLS)

    async def request_reset(self, email: str, **kw: Any) -> httpx.Response:
        return await self.client.post("/auth/password-reset/request", json={"email": email}, **kw)

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until the worker has handled every queued outbox row."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            async with self.runtime.store.tx() as tx:
                waiting, _, _ = await tx.outbox.stats()
                if waiting == 0:
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

    async def dump(self) -> str:
        """Every value of every table, as text, on any backend (on SQLite, reading the file's
        bytes is stronger: it also sees freed pages and the WAL)."""
        async with self.runtime.store.engine.connect() as connection:
            rows = [
                repr(tuple(row))
                for table in Base.metadata.sorted_tables
                for row in (await connection.execute(select(table))).all()
            ]
        return "\n".join(rows)

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
    # IPPROTO_TCP spelled out: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say
    # so, and with Nagle on every request on a kept-alive connection waits ~40 ms.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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
        # Keep-alive past any wait in a test: uvicorn closes an idle connection after 5 s by
        # default, and a client reusing it at that moment gets a ReadError (HTTP/1.1's race,
        # not ours) — tests that wait ~5 s, e.g. for the LISTEN retry, would hit it.
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="on",
            proxy_headers=False,
            timeout_keep_alive=120,
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
            url = socket_url(sock)
            async with contextlib.AsyncExitStack() as clients:
                client = await clients.enter_async_context(
                    httpx.AsyncClient(base_url=url, timeout=30, verify=TLS)
                )
                operator = None
                if app.state.operator_url:
                    operator = await clients.enter_async_context(
                        httpx.AsyncClient(base_url=app.state.operator_url, timeout=30, verify=TLS)
                    )
                yield Served(url, client, clock, settings, app.state.runtime, smtp, operator)
        finally:
            server.should_exit = True
            await task


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend_settings(database_url: str, limit_settings: dict[str, Any]) -> dict[str, Any]:
    """Pass to `make_settings(tmp_path, **backend_settings, ...)` for the backend under test."""
    return {"database_url": database_url, **limit_settings}


@pytest.fixture
async def app(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> AsyncIterator[Served]:
    settings = make_settings(tmp_path, smtp_url=smtp.url, **backend_settings)
    async with serve(settings, clock, smtp) as served:
        yield served
