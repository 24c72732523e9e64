"""SIGTERM to `chaser-auth serve` under load (embedded SQLite, in-process delivery worker)
loses nothing and strands nothing.

A real `chaser-auth serve` process takes reset requests for 10 accounts from 32 concurrent
clients (a new connection per request) while its worker delivers to an SMTP sink that takes
0.3 s to accept each message. Once 100 requests have been answered and the worker holds
claimed rows with a message in DATA, the test sends SIGTERM; the clients keep sending until a
connection is refused. What the test proves:

* in-flight requests finish: every request that got an answer got 200 with the one constant
  body — none a 5xx; requests sent before the signal and answered after it exist (the drain
  was exercised). Refused connections, and connections closed before a byte of an answer
  whose request never reached the app, are counted apart;
* the process exits cleanly within 30 s: code 0 (or the re-raised SIGTERM, as uvicorn does),
  "Application shutdown complete" and "delivery worker stopped" in its log, no traceback;
* the worker finished or released what it claimed: no outbox row is left `queued` with a
  lease (`locked_until`) in the future, which would wait out `CHASER_AUTH_WORKER_LEASE`;
* nothing is lost, nothing half-done: exactly one outbox row per request answered 200 (the
  only source of rows here), per account as well as in total (each row handled leaves one
  `reset_requested` audit event with the account's id);
* after `chaser-auth worker` on the same directory every row ends `done` (none `dead`), and
  each account received exactly the mails its per-address limit allows (3/hour, the default),
  with no Message-ID twice.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from tests.conftest import PASSWORD, TLS, Smtp, SmtpSink, free_port
from tests.processes import CLI
from tests.test_cli import base_env, cli_parallel, outbox, poll, running

ACCOUNTS = [f"shutdown{i}@example.com" for i in range(10)]
PER_ADDRESS = 3  # CHASER_AUTH_RATE_LIMIT_RESET_PER_ADDRESS, default 3/hour
CONCURRENCY = 32
SIGNAL_AFTER = 100  # answers before SIGTERM, at least
MIN_CLAIMS = 2  # rows the worker holds at SIGTERM, at least
MAX_REQUESTS = 5000  # a bound, should the listener never close
SMTP_DELAY = 0.3
EXIT_TIMEOUT = 30.0


@dataclass
class SlowSink(SmtpSink):
    """Accepts every message, but only after SMTP_DELAY: the worker's sends stay in flight.
    `sending` counts the messages in DATA right now."""

    sending: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.sending += 1
        try:
            await asyncio.sleep(SMTP_DELAY)
            return await super().handle_DATA(server, session, envelope)
        finally:
            with self.lock:
                self.sending -= 1


@pytest.fixture
def slow_smtp() -> Iterator[tuple[Smtp, SlowSink]]:
    sink = SlowSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield Smtp(sink, port), sink
    finally:
        controller.stop()


@dataclass
class Outcome:
    address: str
    started: float  # time.monotonic() when the request was sent
    ended: float
    status: int | None = None  # the HTTP status, if an answer came
    body: Any = None
    error: str | None = None  # the transport error, if no answer came
    refused: bool = False  # the connection was refused: the listener had closed


class Load:
    """Reset requests from CONCURRENCY threads, each request on a new connection, until the
    first refused connection (or MAX_REQUESTS)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self.sent = 0
        self.answered = 0
        self.signal_due = threading.Event()  # SIGNAL_AFTER answers arrived
        self.refused = threading.Event()

    def _next(self) -> str | None:
        with self.lock:
            if self.refused.is_set() or self.sent >= MAX_REQUESTS:
                return None
            self.sent += 1
            return ACCOUNTS[self.sent % len(ACCOUNTS)]

    def _client(self) -> None:
        # No keep-alive: a fresh connection per request, so that after the listener closes a
        # request is refused outright instead of racing the server's close of an idle one.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=self.url, timeout=30, limits=limits) as client:
            while (address := self._next()) is not None:
                outcome = Outcome(address, time.monotonic(), 0.0)
                try:
                    response = client.post(
                        "/auth/password-reset/request",
                        json={"email": address},
                        headers={"Connection": "close"},
                    )
                    outcome.status = response.status_code
                    try:
                        outcome.body = response.json()
                    except ValueError:
                        outcome.body = response.text
                except httpx.ConnectError:
                    outcome.refused = True
                    self.refused.set()
                except httpx.TransportError as exc:
                    outcome.error = f"{type(exc).__name__}: {exc}"
                outcome.ended = time.monotonic()
                with self.lock:
                    self.outcomes.append(outcome)
                    if outcome.status is not None:
                        self.answered += 1
                        if self.answered >= SIGNAL_AFTER:
                            self.signal_due.set()

    def run(self) -> None:
        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            for run in [pool.submit(self._client) for _ in range(CONCURRENCY)]:
                run.result()


def db_rows(db: Path, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db, timeout=10) as connection:
        return connection.execute(query, params).fetchall()


def claimed(db: Path) -> int:
    """Rows a worker holds: queued, with a lease."""
    query = "SELECT count(*) FROM outbox WHERE status = 'queued' AND locked_until IS NOT NULL"
    return int(db_rows(db, query)[0][0])


def parse_utc(value: str) -> datetime:
    # SQLite keeps UTC without a zone (tables.UTCDateTime), as "YYYY-MM-DD HH:MM:SS[.ffffff]".
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def test_sigterm_to_serve_under_load_finishes_requests_releases_claims_and_loses_no_mail(
    tmp_path: Path, slow_smtp: tuple[Smtp, SlowSink]
) -> None:
    smtp, sink = slow_smtp
    # The embedded defaults (SQLite in ./var, limits in memory), mail to the slow sink.
    env = base_env(
        CHASER_AUTH_SMTP_URL=smtp.url,
        CHASER_AUTH_RATE_LIMIT_RESET_PER_IP="1000000/minute",
        CHASER_AUTH_WORKER_POLL_INTERVAL="0.05",
    )
    db = tmp_path / "var" / "chaser-auth.db"
    created = cli_parallel(
        [("users", "create", address, "--password-stdin") for address in ACCOUNTS],
        cwd=tmp_path,
        env=env,
        stdins=[PASSWORD + "\n"] * len(ACCOUNTS),
    )
    assert [c.returncode for c in created] == [0] * len(ACCOUNTS), created
    user_ids = {row[1]: row[0] for row in db_rows(db, "SELECT id, email FROM users ORDER BY email")}
    assert sorted(user_ids) == sorted(ACCOUNTS)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(CLI), "serve", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def serve_log() -> str:
        return log_path.read_text(encoding="utf-8", errors="replace")

    try:

        def healthy() -> bool:
            assert process.poll() is None, f"serve exited with {process.returncode}:\n{serve_log()}"
            try:
                return httpx.get(f"{url}/healthz", timeout=1, verify=TLS).status_code == 200
            except httpx.TransportError:
                return False

        poll(healthy, "chaser-auth serve to answer /healthz", timeout=30)

        load = Load(url)
        driver = threading.Thread(target=load.run, name="load")
        driver.start()
        try:
            assert load.signal_due.wait(timeout=60), f"no {SIGNAL_AFTER} answers within 60 s"
            # ... and the worker mid-batch: several rows claimed, a message of them in DATA.
            claims_at_signal = poll(
                lambda: sink.sending and (held := claimed(db)) >= MIN_CLAIMS and held,
                "the worker to be sending a batch",
                timeout=30,
            )
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
        finally:
            driver.join(timeout=120)
        assert not driver.is_alive(), "the clients never finished"
        try:
            code = process.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"serve still running {EXIT_TIMEOUT:.0f} s after SIGTERM"
            ) from None
        exited = time.monotonic()
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        sys.stdout.write(f"--- chaser-auth serve log ---\n{serve_log()}")  # shown on failure
        raise

    # -- the requests ---------------------------------------------------------------------------
    outcomes = load.outcomes
    answered = [o for o in outcomes if o.status is not None]
    ok = [o for o in answered if o.status == 200]
    refused = [o for o in outcomes if o.refused]
    drained = [o for o in ok if o.started < signalled < o.ended]
    # Connected, then closed before a byte of an answer came: until uvicorn notices the signal
    # (it looks every 0.1 s) and closes its listener, the kernel still completes handshakes;
    # closing the listener resets those still in its accept queue ("reset by peer"), and
    # uvicorn closes accepted connections whose request it has not read yet ("without sending
    # a response"). The app never saw these requests — checked below: there is no outbox row
    # beyond the answers 200 — so, like refused ones, they are counted apart.
    closed_unread = [o for o in outcomes if o.error is not None]
    before = sum(o.started < signalled for o in closed_unread)
    summary = (
        f"{len(outcomes)} sent, {len(ok)} answered 200 ({len(drained)} of them in flight at "
        f"SIGTERM), {len(answered) - len(ok)} answered otherwise, {len(refused)} refused, "
        f"{len(closed_unread)} closed before an answer ({before} sent before SIGTERM); "
        f"{claims_at_signal} rows claimed at SIGTERM; exit {code} "
        f"{exited - signalled:.2f} s after SIGTERM"
    )
    sys.stdout.write(summary + "\n")
    assert [(o.status, o.body) for o in answered if o.status != 200] == [], summary
    bodies = {repr(o.body) for o in ok}
    assert len(bodies) == 1, bodies  # one constant body for every address
    assert refused, "the listener never closed"
    # A refusal must come after the signal. Judged by when the refusal arrived, not by when
    # the client thread stamped its start: among the test's client threads, one can wait for
    # the GIL for a long while between that stamp and its connect, and the listener may close
    # in between.
    assert all(o.ended >= signalled for o in refused), "refused before SIGTERM"
    assert all(
        str(o.error).startswith(("ReadError", "WriteError"))
        or "without sending a response" in str(o.error)
        for o in closed_unread
    ), closed_unread
    assert drained, f"no request was in flight at SIGTERM; {summary}"
    assert len(ok) >= SIGNAL_AFTER

    # -- the process ----------------------------------------------------------------------------
    text = serve_log()
    assert code in (0, -signal.SIGTERM), f"serve exited with {code}:\n{text}"
    assert "Application shutdown complete" in text, text
    assert "delivery worker stopped" in text, text
    assert "Traceback" not in text, text

    # -- the outbox right after the exit: every 200 has its row, no claim is stranded -----------
    rows = db_rows(db, "SELECT id, kind, status, locked_until, outcome FROM outbox")
    assert {row[1] for row in rows} == {"password_reset_request"}
    # As many rows as answers 200: none lost, and none for a request that got no answer (an
    # in-flight request cut off after its commit would show here).
    assert len(rows) == len(ok), f"{len(rows)} outbox rows for {len(ok)} answers 200; {summary}"
    now = datetime.now(UTC)
    stranded = [row for row in rows if row[2] == "queued" and row[3] and parse_utc(row[3]) > now]
    assert stranded == [], f"claims left for the lease to expire: {stranded}"
    by_status = Counter(row[2] for row in rows)
    assert by_status["dead"] == 0
    mails_at_exit = {a: len(sink.to(a)) for a in ACCOUNTS}
    sys.stdout.write(f"at exit: outbox {dict(by_status)}, mails {mails_at_exit}\n")

    # -- a worker on the same directory delivers the rest ---------------------------------------
    with running(
        "worker", cwd=tmp_path, env=env, name="worker", stopped="delivery worker stopped"
    ) as worker:
        # Up before anything else: serve may have delivered everything already, and a SIGTERM
        # during the worker's start-up would test the interpreter's default, not its shutdown.
        poll(lambda: "delivery worker started" in worker.log(), "the worker to start", timeout=60)

        def all_done() -> bool:
            worker.assert_alive()
            statuses = db_rows(db, "SELECT status, count(*) FROM outbox GROUP BY status")
            return dict(statuses) == {"done": len(rows)}

        poll(all_done, "every outbox row to end done", timeout=60)

    listed = outbox(tmp_path, env)  # what an operator sees
    assert sorted(r.id.replace("-", "") for r in listed) == sorted(str(r[0]) for r in rows)
    assert {r.status for r in listed} == {"done"}
    outcomes_by_row = Counter(r.outcome for r in listed)
    assert set(outcomes_by_row) <= {"sent", "suppressed"}, outcomes_by_row

    # Every row was handled once, for its account: one `reset_requested` audit event each, as
    # many per account as the requests answered 200 for it.
    audited = Counter(
        row[0]
        for row in db_rows(db, "SELECT user_id FROM audit_events WHERE event = 'reset_requested'")
    )
    assert sum(audited.values()) == len(rows), (audited, len(rows))
    ok_per_account = Counter(o.address for o in ok)
    assert {a: audited[user_ids[a]] for a in ACCOUNTS} == dict(ok_per_account), audited

    # -- the mail ---------------------------------------------------------------------------------
    messages = list(sink.messages)
    ids = [m.message["Message-ID"] for m in messages]
    assert len(ids) == len(set(ids)), "a Message-ID was sent twice"
    assert outcomes_by_row["sent"] == len(messages)
    received = {a: len(sink.to(a)) for a in ACCOUNTS}
    assert all(ok_per_account[a] > PER_ADDRESS for a in ACCOUNTS), ok_per_account
    assert received == dict.fromkeys(ACCOUNTS, PER_ADDRESS), (
        f"mails per account: {received} (at serve's exit: {mails_at_exit}); "
        f"the per-address limit is {PER_ADDRESS}/hour"
    )
