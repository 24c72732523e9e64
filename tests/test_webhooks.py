"""Signed webhooks: each account event reaches a real HTTP receiver that checks every signature
with the `standardwebhooks` package — after the action that causes it, once per webhook-id, in
order per account, through an outage of the receiver and a SIGKILL of the worker; never for a
reset request that matched no account; only the events each endpoint asked for."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from standardwebhooks import Webhook

from chaser_auth.config import new_webhook_secret
from chaser_auth.domain.admin import key_digest
from chaser_auth.runtime import Runtime
from chaser_auth.store import migrate
from tests.api.test_reset_request import comparable
from tests.conftest import (
    EVERY_BACKEND,
    NEW_PASSWORD,
    PASSWORD,
    FakeClock,
    Served,
    Smtp,
    bound_socket,
    free_port,
    make_settings,
    serve,
    socket_url,
)
from tests.processes import CLI
from tests.test_cli import base_env, cli
from tests.test_integration import GUIDE, guide_block

BACKENDS = EVERY_BACKEND
ADMIN_KEY = "chak_webhook-tests-admin-key-0123456789abcdefghijklmno"
SECRET = new_webhook_secret()
OTHER_SECRET = new_webhook_secret()
FORBIDDEN_KEYS = {"token", "password", "password_hash", "code", "link", "secret"}


# -- the receiver -------------------------------------------------------------------------------


@dataclass
class Delivery:
    id: str
    type: str
    timestamp: str
    data: dict[str, Any]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1:`port` in a thread of its own that verifies every request
    with `Webhook(secret).verify` and keeps what it accepted; `stop()` takes it off the port
    (connections refused), `start()` puts it back. `delay` holds each answer that long."""

    secret: str
    port: int = field(default_factory=free_port)
    delivered: list[Delivery] = field(default_factory=list)
    rejected: int = 0
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                try:
                    event = Webhook(receiver.secret).verify(body, dict(self.headers.items()))
                except Exception:  # noqa: BLE001 - any failure is a refusal
                    with receiver.lock:
                        receiver.rejected += 1
                    self.send_response(400)
                    self.end_headers()
                    return
                time.sleep(receiver.delay)
                with receiver.lock:
                    receiver.delivered.append(
                        Delivery(
                            self.headers["webhook-id"],
                            event["type"],
                            event["timestamp"],
                            event["data"],
                            body,
                        )
                    )
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self) -> list[Delivery]:
        with self.lock:
            return list(self.delivered)

    def of_type(self, kind: str) -> list[Delivery]:
        return [d for d in self.events() if d.type == kind]


@contextlib.contextmanager
def receiving(secret: str = SECRET) -> Iterator[Receiver]:
    receiver = Receiver(secret)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


def endpoints(*entries: dict[str, Any]) -> str:
    return json.dumps(list(entries))


async def arrived(
    app: Served | None, receiver: Receiver, kind: str, count: int = 1, timeout: float = 20.0
) -> list[Delivery]:
    """Wait for `count` events of type `kind`, moving the test clock on a second per poll so
    that backed-off retries fall due."""
    deadline = time.monotonic() + timeout
    while True:
        got = receiver.of_type(kind)
        if len(got) >= count:
            return got
        if time.monotonic() > deadline:
            seen = [d.type for d in receiver.events()]
            raise AssertionError(f"{count} {kind} event(s) never arrived; got {seen}")
        if app is not None:
            app.clock.advance(1)
            app.runtime.wake.set()
        await asyncio.sleep(0.05)


def assert_clean(delivery: Delivery) -> None:
    """Ids and facts only: no token, password, hash or code, in any field."""
    assert not FORBIDDEN_KEYS & set(delivery.data), delivery.data
    assert b"$argon2" not in delivery.body
    assert PASSWORD.encode() not in delivery.body and NEW_PASSWORD.encode() not in delivery.body


@contextlib.asynccontextmanager
async def served(
    tmp_path: Path,
    clock: FakeClock,
    smtp: Smtp,
    backend_settings: dict[str, Any],
    hooks: str,
    **overrides: Any,
) -> AsyncIterator[Served]:
    settings = make_settings(
        tmp_path,
        smtp_url=smtp.url,
        webhooks=hooks,
        admin_keys=f"tests:{key_digest(ADMIN_KEY)}",
        **backend_settings,
        **overrides,
    )
    async with serve(settings, clock, smtp) as app:
        yield app


def link_token(text: str, page: str) -> str:
    marker = f"/{page}#token="
    start = text.index(marker) + len(marker)
    end = start
    while end < len(text) and (text[end].isalnum() or text[end] in "-_"):
        end += 1
    return text[start:end]


# -- every event, after its action --------------------------------------------------------------


async def test_each_event_arrives_signed_after_the_action_that_causes_it(
    tmp_path: Path, clock: FakeClock, smtp: Smtp, backend_settings: dict[str, Any]
) -> None:
    with receiving() as receiver:
        hooks = endpoints({"name": "app", "url": receiver.url, "secret": SECRET})
        async with served(tmp_path, clock, smtp, backend_settings, hooks) as app:
            assert app.operator is not None
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            email = "Hook.Person@example.com"

            # sign-up: the worker makes the account
            assert receiver.events() == []
            answer = await app.client.post(
                "/auth/register", json={"email": email, "password": PASSWORD}
            )
            assert answer.status_code == 202, answer.text
            [made] = await arrived(app, receiver, "account.created")
            user_id = made.data["user_id"]
            assert made.data == {
                "user_id": user_id,
                "email": "Hook.Person@example.com",
                "email_verified": False,
                "via": "sign_up",
            }
            [mail] = await smtp.sink.wait_for(1, to="hook.person@example.com")

            # verification
            assert receiver.of_type("account.email_verified") == []
            token = link_token(mail.text(), "verify-email")
            answer = await app.client.post("/auth/verify-email", json={"token": token})
            assert answer.status_code == 200
            session = answer.json()["token"]
            [verified] = await arrived(app, receiver, "account.email_verified")
            assert verified.data == {"user_id": user_id, "email": "Hook.Person@example.com"}

            # logout
            me = await app.client.get("/auth/me", headers={"Authorization": f"Bearer {session}"})
            assert me.status_code == 200
            assert receiver.of_type("session.ended") == []
            answer = await app.client.post(
                "/auth/logout", headers={"Authorization": f"Bearer {session}"}
            )
            assert answer.status_code == 204
            [logout] = await arrived(app, receiver, "session.ended")
            assert logout.data["user_id"] == user_id and logout.data["by"] == "user"
            assert uuid.UUID(logout.data["session_id"])

            # reset requested, then reset
            _, token = await app.reset_link(email)
            [asked] = await arrived(app, receiver, "account.password_reset_requested")
            assert asked.data["user_id"] == user_id and asked.data["link_issued"] is True
            assert asked.data["email"] == "Hook.Person@example.com"
            assert receiver.of_type("account.password_reset") == []
            answer = await app.client.post(
                "/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD}
            )
            assert answer.status_code == 200
            session = answer.json()["token"]
            [reset] = await arrived(app, receiver, "account.password_reset")
            assert reset.data == {"user_id": user_id, "other_sessions_ended": 0}

            # password change
            assert receiver.of_type("account.password_changed") == []
            answer = await app.client.post(
                "/auth/password/change",
                json={"current_password": NEW_PASSWORD, "password": PASSWORD},
                headers={"Authorization": f"Bearer {session}"},
            )
            assert answer.status_code == 200, answer.text
            session = answer.json()["token"]
            [changed] = await arrived(app, receiver, "account.password_changed")
            assert changed.data == {"user_id": user_id, "other_sessions_ended": 1}

            # the account ends one of its sessions
            listed = await app.client.get(
                "/auth/sessions", headers={"Authorization": f"Bearer {session}"}
            )
            [current] = listed.json()["sessions"]
            answer = await app.client.delete(
                f"/auth/sessions/{current['id']}", headers={"Authorization": f"Bearer {session}"}
            )
            assert answer.status_code == 204
            ended = await arrived(app, receiver, "session.ended", 2)
            assert ended[-1].data == {"user_id": user_id, "session_id": current["id"], "by": "user"}

            # an operator: end all sessions, disable, enable, delete (the admin API)
            login = await app.client.post(
                "/auth/login", json={"email": email, "password": PASSWORD}
            )
            assert login.status_code == 200
            answer = await app.operator.delete(f"/admin/accounts/{user_id}/sessions", headers=admin)
            assert answer.status_code in (200, 204), answer.text
            ended = await arrived(app, receiver, "session.ended", 3)
            assert ended[-1].data["by"] == "operator"
            for action, kind in (("disable", "account.disabled"), ("enable", "account.enabled")):
                assert receiver.of_type(kind) == []
                answer = await app.operator.post(
                    f"/admin/accounts/{user_id}/{action}", headers=admin
                )
                assert answer.status_code == 200, answer.text
                [event] = await arrived(app, receiver, kind)
                assert event.data["user_id"] == user_id
            assert receiver.of_type("account.disabled")[0].data["sessions_ended"] == 0
            answer = await app.operator.delete(f"/admin/accounts/{user_id}", headers=admin)
            assert answer.status_code in (200, 204), answer.text
            [deleted] = await arrived(app, receiver, "account.deleted")
            assert deleted.data == {"user_id": user_id, "by": "operator"}

            await app.settle()
            events = receiver.events()
            assert receiver.rejected == 0
            assert [d.type for d in events] == [
                "account.created",
                "account.email_verified",
                "session.ended",
                "account.password_reset_requested",
                "account.password_reset",
                "account.password_changed",
                "session.ended",
                "session.ended",
                "account.disabled",
                "account.enabled",
                "account.deleted",
            ]
            assert len({d.id for d in events}) == len(events)
            assert [d.timestamp for d in events] == sorted(d.timestamp for d in events)
            for delivery in events:
                assert delivery.id.startswith("msg_")
                assert_clean(delivery)


async def test_operator_made_and_invited_accounts_are_created_events(
    tmp_path: Path, clock: FakeClock, smtp: Smtp, backend_settings: dict[str, Any]
) -> None:
    with receiving() as receiver:
        hooks = endpoints({"url": receiver.url, "secret": SECRET})
        async with served(tmp_path, clock, smtp, backend_settings, hooks) as app:
            await app.create_user("made@example.com")
            await app.runtime.admin.invite("invited@example.com", key=None)
            made = await arrived(app, receiver, "account.created", 2)
            assert sorted(d.data["via"] for d in made) == ["invitation", "operator"]
            assert all(d.data["email_verified"] is True for d in made)


async def test_a_sign_up_nobody_verified_ends_with_a_deleted_event(
    tmp_path: Path, clock: FakeClock, smtp: Smtp, backend_settings: dict[str, Any]
) -> None:
    with receiving() as receiver:
        hooks = endpoints({"url": receiver.url, "secret": SECRET})
        async with served(tmp_path, clock, smtp, backend_settings, hooks) as app:
            answer = await app.client.post(
                "/auth/register", json={"email": "late@example.com", "password": PASSWORD}
            )
            assert answer.status_code == 202
            [made] = await arrived(app, receiver, "account.created")
            await app.settle()
            clock.advance(app.settings.verify_token_ttl + 1)
            assert await app.runtime.housekeeping.pending_sign_up_expiry() == 1
            app.runtime.wake.set()
            [gone] = await arrived(app, receiver, "account.deleted")
            assert gone.data == {"user_id": made.data["user_id"], "by": "expiry"}


async def test_the_guides_receiver_verifies_and_handles_each_event_once(
    tmp_path: Path, clock: FakeClock, smtp: Smtp
) -> None:
    source = guide_block("async def chaser_auth_events").replace("os.environ[", "ENV[")
    guide: dict[str, Any] = {"ENV": {"CHASER_AUTH_WEBHOOK_SECRET": SECRET}}
    exec(compile(source, str(GUIDE), "exec"), guide)  # noqa: S102 - our own docs' example
    sock = bound_socket()
    server = uvicorn.Server(uvicorn.Config(guide["app"], log_config=None, access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        url = f"{socket_url(sock)}/hooks/chaser-auth"
        hooks = endpoints({"url": url, "secret": SECRET})
        backend = {"database_url": f"sqlite+aiosqlite:///{tmp_path}/auth.db"}
        async with served(tmp_path, clock, smtp, backend, hooks) as app:
            user_id = await app.create_user("guide@example.com")
            await app.runtime.admin.delete("guide@example.com", key=None)
            await app.outbox_until(
                lambda rows: all(r.status == "done" for r in rows if r.kind.startswith("webh"))
            )
            async with app.runtime.store.tx() as tx:
                rows = [r for r in await tx.outbox.listing() if r.kind.startswith("webhook:")]
        handled = guide["handled"]
        assert set(handled) == {f"msg_{r.id}" for r in rows}
        assert [e["type"] for e in handled.values()] == ["account.created", "account.deleted"]
        assert {e["data"]["user_id"] for e in handled.values()} == {user_id}
        # a forged request (another secret) is refused, and handles nothing
        async with httpx.AsyncClient() as client:
            forged_body = b'{"type":"account.deleted","timestamp":"x","data":{}}'
            forged = Webhook(OTHER_SECRET).sign(
                "msg_forged", datetime.now(UTC), forged_body.decode()
            )
            answer = await client.post(
                url,
                content=forged_body,
                headers={
                    "webhook-id": "msg_forged",
                    "webhook-timestamp": str(int(time.time())),
                    "webhook-signature": forged,
                },
            )
        assert answer.status_code == 400 and "msg_forged" not in handled
    finally:
        server.should_exit = True
        await task
        sock.close()


# -- nothing for an unknown address -------------------------------------------------------------


async def test_a_reset_request_for_an_unknown_address_emits_nothing_and_answers_the_same(
    tmp_path: Path, clock: FakeClock, smtp: Smtp, backend_settings: dict[str, Any]
) -> None:
    with receiving() as receiver:
        hooks = endpoints({"url": receiver.url, "secret": SECRET})
        async with served(tmp_path, clock, smtp, backend_settings, hooks) as app:
            user_id = await app.create_user("known@example.com")
            await arrived(app, receiver, "account.created")
            unknown = await app.request_reset("nobody@example.com")
            known = await app.request_reset("known@example.com")
            assert comparable(unknown) == comparable(known)
            [asked] = await arrived(app, receiver, "account.password_reset_requested")
            await app.settle()
            await asyncio.sleep(0.3)  # anything else would have come by now
            assert asked.data["user_id"] == user_id
            assert [d.type for d in receiver.events()] == [
                "account.created",
                "account.password_reset_requested",
            ]
            async with app.runtime.store.tx() as tx:
                rows = await tx.outbox.listing()
            hooks_rows = [r for r in rows if r.kind.startswith("webhook:")]
            assert all(str(r.user_id) == user_id for r in hooks_rows)


async def test_a_disabled_accounts_request_is_told_with_no_link_issued(
    tmp_path: Path, clock: FakeClock, smtp: Smtp, backend_settings: dict[str, Any]
) -> None:
    with receiving() as receiver:
        hooks = endpoints(
            {"url": receiver.url, "secret": SECRET, "events": ["account.password_reset_requested"]}
        )
        async with served(tmp_path, clock, smtp, backend_settings, hooks) as app:
            await app.create_user("off@example.com")
            await app.runtime.admin.set_active("off@example.com", False, key=None)
            assert (await app.request_reset("off@example.com")).status_code == 200
            [asked] = await arrived(app, receiver, "account.password_reset_requested")
            assert asked.data["link_issued"] is False
            assert [d.type for d in receiver.events()] == ["account.password_reset_requested"]


# -- filters ------------------------------------------------------------------------------------


async def test_each_endpoint_gets_only_the_events_it_asked_for(
    tmp_path: Path, clock: FakeClock, smtp: Smtp, backend_settings: dict[str, Any]
) -> None:
    with receiving(SECRET) as everything, receiving(OTHER_SECRET) as deletions:
        hooks = endpoints(
            {"name": "all", "url": everything.url, "secret": SECRET},
            {
                "name": "gone",
                "url": deletions.url,
                "secret": OTHER_SECRET,
                "events": ["account.deleted", "account.disabled"],
            },
        )
        async with served(tmp_path, clock, smtp, backend_settings, hooks) as app:
            await app.create_user("filtered@example.com")
            await app.runtime.admin.set_active("filtered@example.com", False, key=None)
            await app.runtime.admin.set_active("filtered@example.com", True, key=None)
            await app.runtime.admin.delete("filtered@example.com", key=None)
            await arrived(app, everything, "account.deleted")
            await arrived(app, deletions, "account.deleted")
            await app.settle()
            assert [d.type for d in everything.events()] == [
                "account.created",
                "account.disabled",
                "account.enabled",
                "account.deleted",
            ]
            assert [d.type for d in deletions.events()] == ["account.disabled", "account.deleted"]
            # each verified with its own secret: neither accepted the other's
            assert everything.rejected == deletions.rejected == 0
            assert not {d.id for d in everything.events()} & {d.id for d in deletions.events()}


# -- a receiver that is down and comes back -----------------------------------------------------


async def test_a_receiver_down_and_back_gets_every_event_once_in_order_per_account(
    tmp_path: Path, clock: FakeClock, smtp: Smtp, backend_settings: dict[str, Any]
) -> None:
    receiver = Receiver(SECRET)  # not started: connections are refused
    hooks = endpoints({"name": "app", "url": receiver.url, "secret": SECRET})
    try:
        async with served(tmp_path, clock, smtp, backend_settings, hooks) as app:
            accounts = ["one@example.com", "two@example.com", "three@example.com"]
            for email in accounts:
                await app.create_user(email)
            for round_ in range(3):
                for email in accounts:
                    await app.runtime.admin.set_active(email, round_ % 2 == 1, key=None)
            await app.runtime.admin.delete("two@example.com", key=None)
            # every row is tried, and fails, at least twice while the receiver is down
            await app.outbox_until(
                lambda rows: sum(r.attempts >= 2 for r in rows if r.kind == "webhook:app") >= 3
            )
            async with app.runtime.store.tx() as tx:
                queued = [r for r in await tx.outbox.listing() if r.kind == "webhook:app"]
            assert len(queued) == 3 * 4 + 1
            assert {r.status for r in queued} == {"queued"}
            # the claim hands out only each account's oldest row: the rest never went
            tried = [r for r in queued if r.attempts > 0]
            assert len({r.user_id for r in tried}) == len(tried) == 3

            receiver.start()
            await arrived(app, receiver, "account.deleted", 1, timeout=30)
            await arrived(app, receiver, "account.disabled", 6, timeout=30)
            await arrived(app, receiver, "account.created", 3, timeout=30)
            await app.settle()
            events = receiver.events()
            assert receiver.rejected == 0
            assert sorted(d.id for d in events) == sorted(f"msg_{r.id}" for r in queued)
            by_account: dict[str, list[str]] = {}
            for delivery in events:
                by_account.setdefault(delivery.data["user_id"], []).append(delivery.type)
                assert_clean(delivery)
            expected = [
                "account.created",
                "account.disabled",
                "account.enabled",
                "account.disabled",
            ]
            assert sorted(by_account.values()) == sorted(
                [expected, expected, [*expected, "account.deleted"]]
            )
            for account in by_account:
                stamps = [d.timestamp for d in events if d.data["user_id"] == account]
                assert stamps == sorted(stamps)
    finally:
        receiver.stop()


async def test_dead_webhooks_are_listed_by_the_cli_and_delivered_when_retried(
    tmp_path: Path, clock: FakeClock, smtp: Smtp
) -> None:
    receiver = Receiver(SECRET)
    hooks = endpoints({"name": "app", "url": receiver.url, "secret": SECRET})
    backend = {"database_url": f"sqlite+aiosqlite:///{tmp_path}/auth.db"}
    try:
        async with served(tmp_path, clock, smtp, backend, hooks, webhook_max_attempts=2) as app:
            user_id = await app.create_user("dead@example.com")
            rows = await app.outbox_until(
                lambda rows: any(r.status == "dead" for r in rows if r.kind == "webhook:app")
            )
            [dead] = [r for r in rows if r.kind == "webhook:app"]
            assert dead.last_error == "webhook_ConnectError" and dead.attempts == 2
            env = base_env(
                CHASER_AUTH_DATABASE_URL=app.settings.database_url,
                CHASER_AUTH_SECRET_KEY_FILE=str(tmp_path / "secret_key"),
                CHASER_AUTH_MAIL_DIR=str(tmp_path / "mail"),
                CHASER_AUTH_WEBHOOKS=hooks,
            )
            listed = await asyncio.to_thread(
                cli, "outbox", "list", "--status", "dead", cwd=tmp_path, env=env
            )
            assert listed.returncode == 0, listed.stderr
            assert str(dead.id) in listed.stdout and "webhook:app" in listed.stdout
            assert SECRET not in listed.stdout + listed.stderr
            # the admin API lists it too, as a dead letter like a mail's
            assert app.operator is not None
            answer = await app.operator.get(
                "/admin/dead-letters", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
            )
            [letter] = answer.json()["dead_letters"]
            assert letter["id"] == str(dead.id) and letter["kind"] == "webhook:app"
            assert letter["last_error"] == "webhook_ConnectError"

            receiver.start()
            retried = await asyncio.to_thread(
                cli, "outbox", "retry", str(dead.id), cwd=tmp_path, env=env
            )
            assert retried.returncode == 0, retried.stderr
            assert SECRET not in retried.stdout + retried.stderr
            app.runtime.wake.set()
            [made] = await arrived(app, receiver, "account.created")
            assert made.id == f"msg_{dead.id}" and made.data["user_id"] == user_id
    finally:
        receiver.stop()


# -- SIGKILL of the worker ----------------------------------------------------------------------


async def test_sigkill_of_the_worker_loses_no_event(tmp_path: Path) -> None:
    receiver = Receiver(SECRET, delay=0.2)  # posts in flight when the kill comes
    receiver.start()
    hooks = endpoints({"name": "app", "url": receiver.url, "secret": SECRET})
    database_url = f"sqlite+aiosqlite:///{tmp_path}/auth.db"
    settings = make_settings(tmp_path, database_url=database_url, webhooks=hooks)
    await asyncio.to_thread(migrate.upgrade, database_url)
    runtime = Runtime.build(settings)
    try:
        for n in range(12):
            email = f"kill{n}@example.com"
            await runtime.accounts.create(email, PASSWORD)
            await runtime.accounts.set_active(email, False)
            await runtime.accounts.set_active(email, True)
        async with runtime.store.tx() as tx:
            rows = [r for r in await tx.outbox.listing() if r.kind == "webhook:app"]
    finally:
        await runtime.close()
    assert len(rows) == 36
    env = base_env(
        CHASER_AUTH_DATABASE_URL=database_url,
        CHASER_AUTH_SECRET_KEY=settings.secret_key.get_secret_value(),  # type: ignore[union-attr]
        CHASER_AUTH_MAIL_DIR=str(tmp_path / "mail"),
        CHASER_AUTH_WEBHOOKS=hooks,
        CHASER_AUTH_WORKER_LEASE="2",
        CHASER_AUTH_MAIL_RETRY_BASE="0.1",
        CHASER_AUTH_MAIL_RETRY_MAX="0.5",
    )
    logs = []
    try:
        for attempt in range(2):
            log_path = tmp_path / f"worker-{attempt}.log"
            logs.append(log_path)
            with log_path.open("ab") as log:
                worker = subprocess.Popen(
                    [str(CLI), "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
                )
            try:
                if attempt == 0:
                    deadline = time.monotonic() + 30
                    while len(receiver.events()) < 4:
                        assert worker.poll() is None, log_path.read_text()
                        assert time.monotonic() < deadline, "the worker delivered nothing"
                        await asyncio.sleep(0.01)
                    worker.send_signal(signal.SIGKILL)
                    worker.wait()
                    assert len(receiver.events()) < len(rows), "killed too late to prove much"
                else:
                    deadline = time.monotonic() + 60
                    wanted = {f"msg_{r.id}" for r in rows}
                    while not wanted <= {d.id for d in receiver.events()}:
                        assert worker.poll() is None, log_path.read_text()
                        assert time.monotonic() < deadline, "events were lost"
                        await asyncio.sleep(0.05)
            finally:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)
                    worker.wait(timeout=20)
    except BaseException:
        for path in logs:
            sys.stdout.write(f"--- {path.name} ---\n{path.read_text()}\n")  # shown on failure
        raise
    finally:
        receiver.stop()
    events = receiver.events()
    assert receiver.rejected == 0
    assert {d.id for d in events} == {f"msg_{r.id}" for r in rows}
    # at-least-once: a post in flight at the kill may come again, with the same id
    assert len(events) - len({d.id for d in events}) <= 16
    # per account, in order of occurrence (each id where it first arrived)
    per_account: dict[str, list[str]] = {}
    for delivery in events:
        per_account.setdefault(delivery.data["user_id"], []).append(delivery.id)
    kind_of = {d.id: d.type for d in events}
    for account, ids in per_account.items():
        kinds = [kind_of[i] for i in dict.fromkeys(ids)]
        assert kinds == ["account.created", "account.disabled", "account.enabled"], account


def test_the_secret_is_never_shown_by_doctor_or_a_configuration_error(tmp_path: Path) -> None:
    good = endpoints({"name": "app", "url": "https://hooks.example.com/in", "secret": SECRET})
    env = base_env(
        CHASER_AUTH_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/auth.db",
        CHASER_AUTH_SECRET_KEY_FILE=str(tmp_path / "secret_key"),
        CHASER_AUTH_MAIL_DIR=str(tmp_path / "mail"),
        CHASER_AUTH_WEBHOOKS=good,
    )
    doctor = cli("doctor", cwd=tmp_path, env=env)
    assert "WEBHOOKS" in doctor.stdout and "app" in doctor.stdout
    assert SECRET not in doctor.stdout + doctor.stderr
    assert SECRET.removeprefix("whsec_") not in doctor.stdout + doctor.stderr
    bad_secret = SECRET[:-8] + "!!!!!!!="
    bad = endpoints({"name": "app", "url": "https://hooks.example.com/in", "secret": bad_secret})
    refused = cli("doctor", cwd=tmp_path, env={**env, "CHASER_AUTH_WEBHOOKS": bad})
    assert refused.returncode == 2
    assert "CHASER_AUTH_WEBHOOKS" in refused.stderr and "whsec_" in refused.stderr
    assert bad_secret not in refused.stderr and bad_secret[6:20] not in refused.stderr


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"url": "ftp://x.example/", "secret": SECRET}, "url"),
        ({"url": "https://x.example/", "secret": "not-a-secret"}, "secret"),
        ({"url": "https://x.example/", "secret": SECRET, "events": ["account.nope"]}, "unknown"),
        ({"url": "https://x.example/", "secret": SECRET, "name": "a b"}, "name"),
    ],
)
def test_a_wrong_endpoint_is_refused_with_the_reason(
    tmp_path: Path, entry: dict[str, Any], reason: str
) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        make_settings(tmp_path, webhooks=json.dumps([entry]))
    assert reason in str(caught.value)
    assert SECRET not in str(caught.value)
