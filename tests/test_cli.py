"""The `chaser-auth` command: serve with the embedded defaults, migrate, users, outbox, help and
configuration errors — each run as a real subprocess in a temporary working directory."""

from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import processes
from tests.conftest import LINK, NEW_PASSWORD, PASSWORD, TLS, Received, Smtp, free_port

ROOT = Path(__file__).resolve().parent.parent
COMMANDS_PAGE = ROOT / "docs" / "operations.md"
T = TypeVar("T")

CHEAP = {
    "CHASER_AUTH_ARGON2_TIME_COST": "1",
    "CHASER_AUTH_ARGON2_MEMORY_COST": "1024",
    "CHASER_AUTH_ARGON2_PARALLELISM": "1",
    "CHASER_AUTH_WORKER_POLL_INTERVAL": "0.05",
    # A free port for each `serve`, never the default 8001 that another run may hold; a test
    # that scrapes /metrics names a port (see `operator_env`).
    "CHASER_AUTH_OPERATOR_ADDRESS": "127.0.0.1:0",
}


# -- running the command ------------------------------------------------------------------------


def base_env(**extra: str) -> dict[str, str]:
    """os.environ without a developer's own CHASER_AUTH_* settings, plus cheap hashing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHASER_AUTH_")}
    env.update(CHEAP)
    env.update(extra)
    return env


def tmp_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Every path the service writes to, inside tmp_path."""
    return base_env(
        CHASER_AUTH_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/state/auth.db",
        CHASER_AUTH_MAIL_DIR=str(tmp_path / "state" / "mail"),
        CHASER_AUTH_SECRET_KEY_FILE=str(tmp_path / "state" / "secret_key"),
        **extra,
    )


def operator_env() -> tuple[dict[str, str], str]:
    """An operator listener on a free port: (the setting, the listener's URL)."""
    address = f"127.0.0.1:{free_port()}"
    return {"CHASER_AUTH_OPERATOR_ADDRESS": address}, f"http://{address}"


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    for stream in (done.stdout, done.stderr):
        assert "Traceback" not in stream, stream
        assert 'File "' not in stream, stream


def cli(
    *args: str, cwd: Path, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    done = processes.run(args, cwd=cwd, env=env, input=stdin)
    no_traceback(done)
    return done


def cli_parallel(
    commands: list[tuple[str, ...]],
    *,
    cwd: Path,
    env: dict[str, str],
    stdins: list[str | None] | None = None,
) -> list[subprocess.CompletedProcess[str]]:
    """Independent `chaser-auth` runs, started together (each one pays a second of imports)."""
    inputs = stdins or [None] * len(commands)
    assert len(inputs) == len(commands)
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        runs = [
            pool.submit(cli, *args, cwd=cwd, env=env, stdin=stdin)
            for args, stdin in zip(commands, inputs, strict=True)
        ]
        return [run.result() for run in runs]


def create_user(address: str, *, cwd: Path, env: dict[str, str], password: str = PASSWORD) -> str:
    # As in the README: `echo PASSWORD | chaser-auth users create EMAIL --password-stdin`.
    done = cli(
        "users", "create", address, "--password-stdin", cwd=cwd, env=env, stdin=password + "\n"
    )
    assert done.returncode == 0, done.stderr
    created = re.fullmatch(r"created account ([0-9a-f-]{36})\n", done.stdout)
    assert created, done.stdout
    return created.group(1)


def poll(check: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    """Call `check` until it returns something other than None/False, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Running:
    process: processes.Command
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def assert_alive(self) -> None:
        assert self.process.poll() is None, f"exited with {self.process.returncode}:\n{self.log()}"


@contextmanager
def running(
    *args: str, cwd: Path, env: dict[str, str], name: str, stopped: str
) -> Iterator[Running]:
    """A long-running `chaser-auth` command, stopped by SIGTERM on exit: it must shut down
    cleanly (log `stopped`) and exit 0 — or, as uvicorn does after a graceful shutdown,
    re-raise the SIGTERM it caught."""
    log_path = cwd / f"{name}.log"
    process = processes.start(args, cwd=cwd, env=env, log=log_path)
    proc = Running(process, log_path)
    try:
        yield proc
    except BaseException:
        sys.stdout.write(f"--- chaser-auth {name} log ---\n{proc.log()}")  # shown on failure
        raise
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=25)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"{name} ignored SIGTERM:\n{proc.log()}") from None
    assert code in (0, -signal.SIGTERM), f"{name} exited with {code} on SIGTERM:\n{proc.log()}"
    assert stopped in proc.log(), proc.log()
    assert "Traceback" not in proc.log(), proc.log()


@contextmanager
def serving(cwd: Path, env: dict[str, str], *extra: str) -> Iterator[str]:
    """`chaser-auth serve` on a free port; yields its base URL once /healthz answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running(
        "serve",
        "--port",
        str(port),
        *extra,
        cwd=cwd,
        env=env,
        name="serve",
        stopped="Application shutdown complete",
    ) as proc:

        def healthy() -> bool:
            proc.assert_alive()
            # Ours, not whoever took the free port first (another test's server would answer
            # /healthz too): uvicorn says where it runs once it holds the socket.
            if f"Uvicorn running on {url}" not in proc.log():
                return False
            try:
                return httpx.get(f"{url}/healthz", timeout=1, verify=TLS).status_code == 200
            except httpx.TransportError:
                return False

        poll(healthy, "chaser-auth serve to answer /healthz", timeout=30)
        yield url


@dataclass
class Row:
    id: str
    kind: str
    status: str
    tries: int
    outcome: str


def outbox(cwd: Path, env: dict[str, str], status: str | None = None) -> list[Row]:
    done = cli("outbox", "list", *(["--status", status] if status else []), cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.splitlines()
    assert header.split()[:4] == ["id", "kind", "status", "tries"]
    rows = []
    for line in lines:
        fields = line.split(None, 5)
        rows.append(Row(fields[0], fields[1], fields[2], int(fields[3]), (fields[5:] or [""])[0]))
    return rows


def mail_to(smtp: Smtp, address: str, count: int = 1) -> list[Received]:
    def arrived() -> list[Received] | None:
        got = smtp.sink.to(address)
        return got if len(got) >= count else None

    return poll(arrived, f"{count} message(s) to {address}")


# -- serve: the README's embedded defaults ------------------------------------------------------


def read_eml(path: Path) -> EmailMessage:
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def test_serve_with_embedded_defaults_writes_mail_files_whose_link_resets_the_password(
    tmp_path: Path,
) -> None:
    env = base_env()  # no database URL, no SMTP URL, no mail dir: the embedded defaults
    mail_dir = tmp_path / "var" / "mail"
    with serving(tmp_path, env) as url:
        create_user("alice@example.com", cwd=tmp_path, env=env)
        requested = httpx.post(
            f"{url}/auth/password-reset/request", json={"email": "alice@example.com"}, timeout=30
        )
        assert requested.status_code == 200

        [eml] = poll(lambda: sorted(mail_dir.glob("*.eml")), "an .eml file in ./var/mail")
        message = read_eml(eml)
        assert message["To"] == "alice@example.com"
        assert message["Subject"] == "Reset your password"
        found = LINK.search(text_of(message))
        assert found, text_of(message)
        link, token = found.group(0), found.group(2)
        assert link == f"http://localhost:8000/reset-password#token={token}"

        confirmed = httpx.post(
            f"{url}/auth/password-reset/confirm",
            json={"token": token, "password": NEW_PASSWORD},
            timeout=30,
        )
        assert confirmed.status_code == 200, confirmed.text
        assert set(confirmed.json()) == {"email", "token", "user_id"}

        login = httpx.post(
            f"{url}/auth/login",
            json={"email": "alice@example.com", "password": NEW_PASSWORD},
            timeout=30,
        )
        assert login.status_code == 200, login.text
        session = login.json()
        assert set(session) == {"email", "token", "user_id"}
        assert session["email"] == "alice@example.com"
        assert session["user_id"] == confirmed.json()["user_id"]
        assert session["token"]

        old = httpx.post(
            f"{url}/auth/login",
            json={"email": "alice@example.com", "password": PASSWORD},
            timeout=30,
        )
        assert old.status_code == 401
        assert old.json()["error"]["code"] == "invalid_credentials"

        # The password-changed notice follows as a second file.
        def two_files() -> list[Path] | None:
            files = sorted(mail_dir.glob("*.eml"))
            return files if len(files) >= 2 else None

        emls = poll(two_files, "the password-changed notice in ./var/mail")

    assert (tmp_path / "var" / "chaser-auth.db").is_file()
    secret = tmp_path / "var" / "secret_key"
    assert secret.is_file()
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(emls) == 2
    for path in emls:
        raw = path.read_bytes()
        texts = [raw.decode("utf-8", "replace")]
        for part in read_eml(path).walk():
            if part.get_content_maintype() == "text":
                texts.append(str(part.get_content()))
        for text in texts:
            assert PASSWORD not in text
            assert NEW_PASSWORD not in text


# -- migrate ------------------------------------------------------------------------------------


def test_migrate_twice_succeeds_both_times(tmp_path: Path) -> None:
    env = tmp_env(tmp_path)
    for _ in range(2):
        done = cli("migrate", cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        assert "database is at the newest schema" in done.stdout
    assert (tmp_path / "state" / "auth.db").is_file()


# -- users create -------------------------------------------------------------------------------


def test_users_create_refuses_weak_duplicate_and_malformed_input_without_a_traceback(
    tmp_path: Path,
) -> None:
    env = tmp_env(tmp_path)
    # The address and the password are judged before any table is read, so these two need
    # no schema and run alongside the migration.
    migrated, weak, malformed = cli_parallel(
        [
            ("migrate",),
            ("users", "create", "a@example.com", "--password-stdin"),
            ("users", "create", "not-an-email", "--password-stdin"),
        ],
        cwd=tmp_path,
        env=env,
        stdins=[None, "Qz9xv\n", PASSWORD + "\n"],
    )
    assert migrated.returncode == 0, migrated.stderr

    assert weak.returncode != 0
    assert "15 characters" in weak.stderr  # the reason
    assert "Qz9xv" not in weak.stderr + weak.stdout  # the password is never echoed
    assert weak.stdout == ""

    assert malformed.returncode != 0
    assert "not a valid email address" in malformed.stderr
    assert malformed.stdout == ""

    create_user("Bob@Example.com", cwd=tmp_path, env=env)
    again = cli(
        "users",
        "create",
        "bob@example.COM",
        "--password-stdin",
        cwd=tmp_path,
        env=env,
        stdin=PASSWORD + "\n",
    )
    assert again.returncode != 0
    assert "already exists" in again.stderr
    assert again.stdout == ""


def test_users_create_in_a_fresh_directory_needs_no_separate_migrate(tmp_path: Path) -> None:
    env = tmp_env(tmp_path)
    done = cli(
        "users",
        "create",
        "fresh@example.com",
        "--password-stdin",
        cwd=tmp_path,
        env=env,
        stdin=PASSWORD + "\n",
    )
    assert done.returncode == 0, done.stderr


# -- outbox -------------------------------------------------------------------------------------


def dead_letters(
    tmp_path: Path,
    env: dict[str, str],
    *,
    accounts: list[str],
    requests: list[str],
    settled: list[str],
) -> list[Row]:
    """Serve with an SMTP URL on which nothing listens, create `accounts`, ask for resets, and
    wait (polling `outbox list`) until the rows' statuses are `settled` (2 attempts each,
    sub-second backoff)."""
    failing = env | {
        "CHASER_AUTH_SMTP_URL": f"smtp://127.0.0.1:{free_port()}",
        "CHASER_AUTH_MAIL_MAX_ATTEMPTS": "2",
        "CHASER_AUTH_MAIL_RETRY_BASE": "0.05",
        "CHASER_AUTH_MAIL_RETRY_MAX": "0.1",
    }
    with serving(tmp_path, failing) as url:  # serve applies the migrations
        created = cli_parallel(
            [("users", "create", address, "--password-stdin") for address in accounts],
            cwd=tmp_path,
            env=env,
            stdins=[PASSWORD + "\n"] * len(accounts),
        )
        assert [c.returncode for c in created] == [0] * len(accounts), created
        for address in requests:
            response = httpx.post(
                f"{url}/auth/password-reset/request", json={"email": address}, timeout=30
            )
            assert response.status_code == 200

        def done() -> list[Row] | None:
            rows = outbox(tmp_path, env)
            return rows if sorted(r.status for r in rows) == sorted(settled) else None

        return poll(done, f"outbox rows {settled}")


ACCOUNTS = ["carol@example.com", "dave@example.com"]


@dataclass
class DeadLetters:
    state: Path  # the state directory (database, secret key) the rows live in
    dead: list[Row]
    done: list[Row]

    def copy_to(self, tmp_path: Path) -> dict[str, str]:
        """A private copy of the state for one test (every process on it has exited)."""
        shutil.copytree(self.state, tmp_path / "state")
        return tmp_env(tmp_path)


@pytest.fixture(scope="module")
def dead_letter_state(tmp_path_factory: pytest.TempPathFactory) -> DeadLetters:
    """Two real dead letters (reset mail for two accounts, SMTP refused twice each) and one
    finished row (a reset request for an address with no account: nothing to send)."""
    origin = tmp_path_factory.mktemp("dead-letters")
    env = tmp_env(origin)
    rows = dead_letters(
        origin,
        env,
        accounts=ACCOUNTS,
        requests=[*ACCOUNTS, "nobody@example.com"],
        settled=["dead", "dead", "done"],
    )
    # The filter that operators use finds exactly the dead letters.
    dead = outbox(origin, env, "dead")
    assert dead == [r for r in rows if r.status == "dead"]
    return DeadLetters(origin / "state", dead, [r for r in rows if r.status == "done"])


def test_dead_letters_record_the_attempts_and_the_delivery_error(
    dead_letter_state: DeadLetters,
) -> None:
    assert len(dead_letter_state.dead) == 2
    for dead in dead_letter_state.dead:
        assert dead.kind == "password_reset_request"
        assert dead.tries == 2  # CHASER_AUTH_MAIL_MAX_ATTEMPTS
        assert re.fullmatch(r"smtp_\w*Connect\w*", dead.outcome), dead.outcome
    [done] = dead_letter_state.done
    assert done.outcome == "no_account"


def test_outbox_retry_redelivers_real_dead_letters_and_refuses_anything_else(
    tmp_path: Path, smtp: Smtp, dead_letter_state: DeadLetters
) -> None:
    env = dead_letter_state.copy_to(tmp_path)
    dead_ids = [row.id for row in dead_letter_state.dead]

    worker_env = env | {"CHASER_AUTH_SMTP_URL": smtp.url}
    with running(
        "worker", cwd=tmp_path, env=worker_env, name="worker", stopped="delivery worker stopped"
    ) as worker:
        poll(lambda: "delivery worker started" in worker.log(), "the worker to start")
        retried = cli_parallel([("outbox", "retry", i) for i in dead_ids], cwd=tmp_path, env=env)
        for dead_id, done in zip(dead_ids, retried, strict=True):
            assert done.returncode == 0, done.stderr
            assert done.stdout == f"queued {dead_id} for delivery\n"

        for address in ACCOUNTS:
            [received] = mail_to(smtp, address)
            link, token = received.link()
            assert link == f"http://localhost:8000/reset-password#token={token}"

        def delivered() -> list[Row] | None:
            rows = outbox(tmp_path, env, "done")
            return rows if len(rows) == 3 else None

        rows = poll(delivered, "the retried messages to be done")
        worker.assert_alive()

    sent = {row.id: row for row in rows if row.outcome == "sent"}
    assert sorted(sent) == sorted(dead_ids)
    assert {row.tries for row in sent.values()} == {1}  # a fresh attempt count
    assert len(smtp.sink.messages) == 2

    # No dead letters are left; a delivered message and an unknown id cannot be retried.
    unknown = str(uuid.uuid4())
    listed, again, missing = cli_parallel(
        [
            ("outbox", "list", "--status", "dead"),
            ("outbox", "retry", dead_ids[0]),
            ("outbox", "retry", unknown),
        ],
        cwd=tmp_path,
        env=env,
    )
    assert listed.returncode == 0
    assert len(listed.stdout.splitlines()) == 1  # the header only
    assert again.returncode == 1
    assert again.stderr == f"chaser-auth: no dead letter {dead_ids[0]}\n"
    assert missing.returncode == 1
    assert missing.stderr == f"chaser-auth: no dead letter {unknown}\n"


def test_outbox_purge_deletes_finished_and_dead_messages_and_keeps_queued_ones(
    tmp_path: Path, dead_letter_state: DeadLetters
) -> None:
    env = dead_letter_state.copy_to(tmp_path)
    # Queue one dead letter again; with no worker running it stays queued.
    requeued, still_dead = dead_letter_state.dead
    assert cli("outbox", "retry", requeued.id, cwd=tmp_path, env=env).returncode == 0

    purged = cli("outbox", "purge", cwd=tmp_path, env=env)
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout == "purged 2 messages\n"  # the other dead letter and the done row

    [left] = outbox(tmp_path, env)  # no done or dead rows remain
    assert (left.id, left.status) == (requeued.id, "queued")
    assert still_dead.id != left.id


# -- help ---------------------------------------------------------------------------------------


def documented_commands() -> list[str]:
    """The lines of the Commands block in docs/operations.md, without the `chaser-auth` prefix
    or comments."""
    text = COMMANDS_PAGE.read_text(encoding="utf-8")
    section = text.split("## Commands", 1)[1]
    block = re.search(r"```\n(.*?)\n```", section, re.DOTALL)
    assert block, "no code block in the Commands section of docs/operations.md"
    lines = []
    for line in block.group(1).splitlines():
        command = line.split("#", 1)[0].strip()
        assert command.startswith("chaser-auth "), line
        lines.append(command.removeprefix("chaser-auth ").strip())
    return lines


def test_help_mentions_every_command_and_flag_in_the_docs(tmp_path: Path) -> None:
    commands = documented_commands()
    names = list(dict.fromkeys(line.split()[0] for line in commands))
    assert names == [
        "serve",
        "worker",
        "migrate",
        "users",
        "outbox",
        "audit",
        "doctor",
        "admin-key",
    ]
    # What each documented line promises: {help invocation: words its output must contain}.
    promised: dict[tuple[str, ...], set[str]] = {(): set(names)}
    for line in commands:
        name, _, rest = line.partition(" ")
        for alternative in re.split(r"\s\|\s", rest):  # "list [--status a|b] | retry ID | purge"
            words = alternative.split()
            action = words[0] if words and re.fullmatch(r"[a-z][a-z-]*", words[0]) else None
            if action:
                promised.setdefault((name,), set()).add(action)
            wanted = set(re.findall(r"--[a-z][a-z-]*", alternative))
            for choices in re.findall(r"--[a-z-]+ ([a-z]+(?:\|[a-z]+)+)", alternative):
                wanted |= set(choices.split("|"))
            if wanted:
                promised.setdefault((name, *([action] if action else [])), set()).update(wanted)
    assert promised[("serve",)] == {"--host", "--port", "--workers", "--no-worker"}
    assert promised[("outbox",)] == {"list", "retry", "purge"}
    assert promised[("outbox", "list")] == {"--status", "queued", "done", "dead"}
    assert promised[("users", "create")] == {"--password-stdin", "--invite"}
    assert promised[("users",)] == {
        "create",
        "list",
        "disable",
        "enable",
        "sessions",
        "delete",
        "reset-link",
    }
    assert promised[("users", "sessions")] == {"--end"}
    assert promised[("users", "delete")] == {"--yes"}
    assert promised[("audit",)] == {"list", "purge"}
    assert promised[("audit", "list")] == {"--since", "--event", "--user", "--limit"}

    invocations = list(promised)
    results = cli_parallel(
        [(*args, "--help") for args in invocations], cwd=tmp_path, env=tmp_env(tmp_path)
    )
    for args, done in zip(invocations, results, strict=True):
        shown = " ".join(["chaser-auth", *args, "--help"])
        assert done.returncode == 0, (shown, done.stderr)
        assert done.stderr == ""
        for word in promised[args]:
            assert re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", done.stdout), (
                f"`{shown}` does not mention {word}:\n{done.stdout}"
            )


# -- configuration errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CHASER_AUTH_RATE_LIMIT_RESET_PER_IP", "banana"),
        ("CHASER_AUTH_SMTP_URL", "http://mail.example.com"),
        ("CHASER_AUTH_MAIL_MAX_ATTEMPTS", "0"),
        ("CHASER_AUTH_OPERATOR_ADDRESS", "8001"),
        ("CHASER_AUTH_PORT", "0"),
    ],
)
def test_an_invalid_setting_exits_2_with_one_line_naming_it(
    tmp_path: Path, variable: str, value: str
) -> None:
    env = tmp_env(tmp_path, **{variable: value})
    commands: list[tuple[str, ...]] = [("migrate",)]
    if variable in ("CHASER_AUTH_RATE_LIMIT_RESET_PER_IP", "CHASER_AUTH_OPERATOR_ADDRESS"):
        commands += [("serve", "--port", str(free_port())), ("outbox", "list")]
    for args, done in zip(commands, cli_parallel(commands, cwd=tmp_path, env=env), strict=True):
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        [line] = done.stderr.splitlines()
        assert line.startswith(f"chaser-auth: configuration: {variable}: "), line
        assert done.stdout == ""
    assert not (tmp_path / "state").exists()  # nothing was created before the check


@pytest.mark.parametrize(
    ("address", "args", "says"),
    [
        ("127.0.0.1:0", ("--workers", "2"), "port 0 would give each of the 2 processes"),
        ("127.0.0.1:{port}", (), "is the API's own (--port or CHASER_AUTH_PORT)"),
    ],
)
def test_serve_refuses_an_operator_address_that_cannot_work_with_its_flags(
    tmp_path: Path, address: str, args: tuple[str, ...], says: str
) -> None:
    port = free_port()
    env = tmp_env(tmp_path, CHASER_AUTH_OPERATOR_ADDRESS=address.format(port=port))
    done = cli("serve", "--port", str(port), *args, cwd=tmp_path, env=env)
    assert done.returncode == 2, (done.stdout, done.stderr)
    [line] = done.stderr.splitlines()
    assert line.startswith("chaser-auth: configuration: CHASER_AUTH_OPERATOR_ADDRESS: "), line
    assert says in line
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "shared"])
def test_serve_whose_operator_address_is_taken_exits_with_one_line(
    tmp_path: Path, reuse_port: bool
) -> None:
    # `shared`: the holder set SO_REUSEPORT, as the processes of another `serve --workers N`
    # do; serve must not join it (scrapes would reach the other service half the time).
    with socket.socket() as holder:
        if reuse_port:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        port = free_port()
        env = tmp_env(tmp_path, CHASER_AUTH_OPERATOR_ADDRESS=taken)
        done = cli("serve", "--port", str(port), "--workers", "2", cwd=tmp_path, env=env)
    assert done.returncode == 1, (done.stdout, done.stderr)
    [line] = done.stderr.splitlines()
    assert line == (
        f"chaser-auth: cannot listen on {taken} (CHASER_AUTH_OPERATOR_ADDRESS): "
        "Address already in use"
    )
    assert not (tmp_path / "state").exists()  # refused before migrating
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)


def test_serve_binds_chaser_auth_host_and_port_unless_flags_say_otherwise(
    tmp_path: Path,
) -> None:
    """`serve --host/--port` default to CHASER_AUTH_HOST and CHASER_AUTH_PORT (as a container
    sets them), and the flags win over them; `serve --help` says so."""
    from_env, from_flag = free_port(), free_port()
    env = tmp_env(tmp_path, CHASER_AUTH_HOST="127.0.0.1", CHASER_AUTH_PORT=str(from_env))
    for args, answering, silent in (
        ((), from_env, from_flag),
        (("--port", str(from_flag)), from_flag, from_env),
    ):
        with running(
            "serve", *args, cwd=tmp_path, env=env, name="serve", stopped="shutdown complete"
        ) as proc:

            def healthy(port: int = answering) -> bool:
                proc.assert_alive()
                try:
                    return httpx.get(
                        f"http://127.0.0.1:{port}/healthz", timeout=1, verify=TLS
                    ).is_success
                except httpx.TransportError:
                    return False

            poll(healthy, f"serve {args} to answer on {answering}", timeout=30)
            with pytest.raises(httpx.TransportError):
                httpx.get(f"http://127.0.0.1:{silent}/healthz", timeout=1)
    shown = cli("serve", "--help", cwd=tmp_path, env=env)
    assert "CHASER_AUTH_HOST" in shown.stdout and "CHASER_AUTH_PORT" in shown.stdout


def test_a_short_secret_key_is_refused(tmp_path: Path) -> None:
    env = {**tmp_env(tmp_path), "CHASER_AUTH_SECRET_KEY": "too-short"}
    done = cli("outbox", "list", cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert "CHASER_AUTH_SECRET_KEY" in done.stderr
    assert "Traceback" not in done.stderr

    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "state" / "secret_key").write_text("short\n")
    done = cli("outbox", "list", cwd=tmp_path, env=tmp_env(tmp_path))
    assert done.returncode == 2
    assert "secret key must be at least 32" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_predictable_secret_key_is_refused_at_start(tmp_path: Path) -> None:
    env = {**tmp_env(tmp_path), "CHASER_AUTH_SECRET_KEY": "a" * 32}
    done = cli("outbox", "list", cwd=tmp_path, env=env)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("chaser-auth: configuration: CHASER_AUTH_SECRET_KEY: "), line
    assert "too predictable" in line
    assert "a" * 32 not in line
    assert not (tmp_path / "state").exists()

    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "secret_key").write_text("abcd" * 10 + "\n")
    done = cli("outbox", "list", cwd=tmp_path, env=tmp_env(tmp_path))
    assert done.returncode == 2
    assert "secret key is too predictable" in done.stderr


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def test_serve_with_two_processes_on_one_sqlite_file_sends_each_mail_once(
    tmp_path: Path, smtp: Smtp
) -> None:
    # Twelve requests from one client address: the per-IP limit (10/minute, counted per process
    # without Redis) is raised, so that however the kernel spreads them none is refused.
    env = tmp_env(
        tmp_path,
        CHASER_AUTH_SMTP_URL=smtp.url,
        CHASER_AUTH_WORKER_POLL_INTERVAL="0.05",
        CHASER_AUTH_RATE_LIMIT_RESET_PER_IP="100/minute",
    )
    addresses = [f"multi{i}@example.com" for i in range(6)]
    created = cli_parallel(
        [("users", "create", a, "--password-stdin") for a in addresses],
        cwd=tmp_path,
        env=env,
        stdins=[PASSWORD + "\n"] * len(addresses),
    )
    assert [c.returncode for c in created] == [0] * len(addresses)
    operator, operator_url = operator_env()
    env |= operator
    with serving(tmp_path, env, "--workers", "2") as url, httpx.Client(base_url=url) as client:
        # Several connections, so both processes take requests; each runs its own worker.
        for round_ in range(2):
            for address in addresses:
                with httpx.Client(base_url=url) as fresh:
                    response = fresh.post("/auth/password-reset/request", json={"email": address})
                    assert response.status_code == 200, (round_, response.text)
        for address in addresses:
            mail_to(smtp, address, 2)
        rows = poll(
            lambda: (
                r if (r := outbox(tmp_path, env)) and all(x.status == "done" for x in r) else None
            ),
            "every outbox row done",
        )
        assert client.get("/readyz").status_code == 200
        assert client.get("/metrics").status_code == 404
        # Both processes listen on the one operator port; whichever answers a scrape (a new
        # connection each, so the kernel spreads them) reports the sum of both.
        for _ in range(6):
            with httpx.Client(base_url=operator_url) as scraper:
                scraped = scraper.get("/metrics")
            assert scraped.status_code == 200, scraped.text
            assert metric(scraped.text, "chaser_auth_mail_total", outcome="sent") == len(rows)
            assert metric(
                scraped.text,
                "chaser_auth_http_requests_total",
                route="/auth/password-reset/request",
                status="200",
            ) == 2 * len(addresses)
    assert len(rows) == 2 * len(addresses)
    ids = [m.message["Message-ID"] for m in smtp.sink.messages]
    assert len(ids) == len(set(ids)) == 2 * len(addresses)  # none lost, none sent twice
    # Without Redis the start-up log says how the limits behave across the processes.
    log = (tmp_path / "serve.log").read_text(encoding="utf-8")
    assert "each of the 2 processes counts the per-IP, login and sign-up limits in its own" in log
    assert f"/metrics on {operator_url}" in log
    assert log.count(f"operator listener on {operator_url}") == 2  # one line per process


# -- serve migrates in a child interpreter ------------------------------------------------------


def alembic_head() -> str:
    from alembic.script import ScriptDirectory

    from chaser_auth.store import migrate

    head = ScriptDirectory.from_config(migrate.alembic_config("sqlite://")).get_current_head()
    assert head
    return head


def test_migrate_quiet_prints_nothing_and_leaves_a_migrated_database(tmp_path: Path) -> None:
    env = tmp_env(tmp_path)
    done = cli("migrate", "--quiet", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == ""  # nothing unless something goes wrong
    # Migrated by that run alone (every later command would migrate by itself).
    db = tmp_path / "state" / "auth.db"
    with sqlite3.connect(db) as connection:
        [(version,)] = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert version == alembic_head()
    assert {"users", "outbox", "audit_events"} <= tables

    user_id = create_user("quiet@example.com", cwd=tmp_path, env=env)
    listed = cli("users", "list", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    [row] = listed.stdout.splitlines()[1:]
    assert row.split()[0] == user_id
    assert row.split()[-1] == "quiet@example.com"


def test_serve_whose_database_cannot_be_opened_exits_with_one_line_and_no_traceback(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a regular file, so nothing can be created below it\n")
    env = tmp_env(tmp_path) | {"CHASER_AUTH_DATABASE_URL": f"sqlite+aiosqlite:///{blocker}/auth.db"}
    port = free_port()
    done = cli("serve", "--port", str(port), cwd=tmp_path, env=env)  # times out if it serves
    assert done.returncode > 0, (done.returncode, done.stdout, done.stderr)
    [line] = done.stderr.splitlines()
    assert line.startswith("chaser-auth: "), line
    assert "Traceback" not in done.stderr
    # It stopped before serving: no start-up line, no secret key made, nothing on the port.
    assert "serving on" not in done.stdout + done.stderr
    assert "Uvicorn running" not in done.stdout + done.stderr
    assert not (tmp_path / "state").exists()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
