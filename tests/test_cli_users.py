"""`chaser-auth users list | disable | enable | delete | reset-link`: run as the real console
script against a temporary SQLite database, with the effects checked over HTTP on a served
copy of the same database (login, sessions, reset links) and in the database file itself."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from tests.conftest import NEW_PASSWORD, PASSWORD
from tests.test_cli import (
    Row,
    cli,
    cli_parallel,
    create_user,
    outbox,
    poll,
    read_eml,
    serving,
    text_of,
    tmp_env,
)

PUBLIC_URL = "https://auth.example.test"
THIRD_PASSWORD = "yet another long passphrase, 77"
HEADER = ["id", "created", "verified", "active", "email"]
NO_ACCOUNT = "chaser-auth: No account has this email address.\n"
# Limits stay out of the way: these tests make a handful of failed logins on purpose.
LIMITS = {
    "CHASER_AUTH_RATE_LIMIT_LOGIN": "1000/minute",
    "CHASER_AUTH_RATE_LIMIT_RESET_PER_IP": "1000/minute",
}


def users(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return cli("users", *args, cwd=cwd, env=env)


def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "auth.db"  # where tests.test_cli.tmp_env puts it


def query(tmp_path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(db_path(tmp_path)) as db:
        return db.execute(sql, params).fetchall()


def uuid_column(value: object) -> str:
    """A Uuid column as stored by SQLAlchemy on SQLite (32 hex digits) in canonical form."""
    return str(uuid.UUID(str(value)))


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("chaser-auth: "), line
    return line


@dataclass
class Listed:
    id: str
    created: str
    verified: str
    active: str
    email: str


def create_users(*addresses: str, cwd: Path, env: dict[str, str]) -> list[str]:
    """`users create` for each address at once (their order of creation is not defined)."""
    done = cli_parallel(
        [("users", "create", a, "--password-stdin") for a in addresses],
        cwd=cwd,
        env=env,
        stdins=[PASSWORD + "\n"] * len(addresses),
    )
    ids = []
    for run in done:
        assert run.returncode == 0, run.stderr
        created = re.fullmatch(r"created account ([0-9a-f-]{36})\n", run.stdout)
        assert created, run.stdout
        ids.append(created.group(1))
    return ids


def listing(cwd: Path, env: dict[str, str]) -> list[Listed]:
    return parse_listing(users("list", cwd=cwd, env=env))


def parse_listing(done: subprocess.CompletedProcess[str]) -> list[Listed]:
    """The rows of `users list`, whose stdout must be the table and nothing else."""
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.splitlines()
    assert header.split() == HEADER, header
    email_column = header.index("email")
    rows = []
    for line in lines:
        fields = line.split()
        assert len(fields) == 5, line
        row = Listed(*fields)
        assert line[email_column:] == row.email, f"misaligned row:\n{header}\n{line}"
        rows.append(row)
    return rows


def login(url: str, address: str, password: str) -> httpx.Response:
    return httpx.post(
        f"{url}/auth/login", json={"email": address, "password": password}, timeout=30
    )


def me(url: str, session: str) -> httpx.Response:
    return httpx.get(f"{url}/auth/me", headers={"Authorization": f"Bearer {session}"}, timeout=30)


def confirm(url: str, token: str, password: str) -> httpx.Response:
    return httpx.post(
        f"{url}/auth/password-reset/confirm",
        json={"token": token, "password": password},
        timeout=30,
    )


def reset_link(cwd: Path, env: dict[str, str], address: str) -> str:
    """The token of the one link `users reset-link` prints, which must be the whole stdout."""
    done = users("reset-link", address, cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    printed = re.fullmatch(
        re.escape(PUBLIC_URL) + r"/reset-password#token=([A-Za-z0-9_-]{43,})\n", done.stdout
    )
    assert printed, done.stdout
    return printed.group(1)


# -- list ---------------------------------------------------------------------------------------


def test_users_list_shows_the_header_alone_then_every_account_oldest_first(
    tmp_path: Path,
) -> None:
    # DEBUG logging on purpose: whatever the command logs must go to stderr, not stdout.
    env = tmp_env(tmp_path, CHASER_AUTH_LOG_LEVEL="DEBUG")
    empty = users("list", cwd=tmp_path, env=env)  # on a fresh directory: migrates first
    assert empty.returncode == 0, empty.stderr
    [header] = empty.stdout.splitlines()
    assert header.split() == HEADER
    assert empty.stdout == header + "\n"

    # Created in this order; the addresses sort the other way, so the order is by age.
    zed = create_user("zed@example.com", cwd=tmp_path, env=env)
    amy = create_user("Amy@Example.com", cwd=tmp_path, env=env)

    done = users("list", cwd=tmp_path, env=env)
    rows = parse_listing(done)  # every line of stdout is the header or a row: no log lines
    assert done.stdout.splitlines()[0] == header
    assert [(r.id, r.email) for r in rows] == [(zed, "zed@example.com"), (amy, "Amy@example.com")]
    assert [(r.verified, r.active) for r in rows] == [("yes", "yes"), ("yes", "yes")]
    now = datetime.now(UTC)
    created = [datetime.strptime(r.created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) for r in rows]
    assert created == sorted(created)
    for stamp in created:
        assert now - timedelta(minutes=5) < stamp <= now + timedelta(seconds=1), stamp


# -- disable / enable ---------------------------------------------------------------------------


def test_users_disable_ends_login_sessions_links_and_reset_mail_until_enable(
    tmp_path: Path,
) -> None:
    env = tmp_env(tmp_path, CHASER_AUTH_PUBLIC_URL=PUBLIC_URL, **LIMITS)
    alice, _ = create_users("alice@example.com", "bob@example.com", cwd=tmp_path, env=env)
    with serving(tmp_path, env) as url:
        session = login(url, "alice@example.com", PASSWORD)
        assert session.status_code == 200, session.text
        token = session.json()["token"]
        assert me(url, token).status_code == 200
        bob_session = login(url, "bob@example.com", PASSWORD).json()["token"]
        link = reset_link(tmp_path, env, "alice@example.com")  # outstanding when disabled

        disabled = users("disable", "alice@example.com", cwd=tmp_path, env=env)
        assert disabled.returncode == 0, disabled.stderr
        assert disabled.stdout == f"disabled account {alice}\n"

        refused = login(url, "alice@example.com", PASSWORD)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_credentials"
        assert me(url, token).status_code == 401
        assert me(url, bob_session).status_code == 200  # only this account's sessions end
        assert confirm(url, link, NEW_PASSWORD).status_code == 400
        listed = {r.email: r for r in listing(tmp_path, env)}
        assert (listed["alice@example.com"].active, listed["alice@example.com"].verified) == (
            "no",
            "yes",
        )
        assert listed["bob@example.com"].active == "yes"

        # No reset mail for a disabled account: the request is answered as for any address,
        # and the worker sends nothing.
        requested = httpx.post(
            f"{url}/auth/password-reset/request", json={"email": "alice@example.com"}, timeout=30
        )
        assert requested.status_code == 200

        def handled() -> list[Row] | None:
            rows = outbox(tmp_path, env)
            return rows if rows and all(r.status == "done" for r in rows) else None

        [row] = poll(handled, "the reset request to be handled")
        assert row.outcome == "no_account"
        assert not list((tmp_path / "state" / "mail").glob("*.eml"))

        enabled = users("enable", "alice@example.com", cwd=tmp_path, env=env)
        assert enabled.returncode == 0, enabled.stderr
        assert enabled.stdout == f"enabled account {alice}\n"

        again = login(url, "alice@example.com", PASSWORD)
        assert again.status_code == 200, again.text
        assert me(url, again.json()["token"]).status_code == 200
        # What disabling ended stays ended.
        assert me(url, token).status_code == 401
        assert confirm(url, link, NEW_PASSWORD).status_code == 400
        assert {r.email: r.active for r in listing(tmp_path, env)} == {
            "alice@example.com": "yes",
            "bob@example.com": "yes",
        }

    events = query(
        tmp_path,
        "SELECT event, user_id FROM audit_events WHERE event IN (?, ?) ORDER BY id",
        "account_disabled",
        "account_enabled",
    )
    assert [(e, uuid_column(u)) for e, u in events] == [
        ("account_disabled", alice),
        ("account_enabled", alice),
    ]


# -- delete -------------------------------------------------------------------------------------


def test_users_delete_needs_yes_then_removes_the_account_and_its_sessions(
    tmp_path: Path,
) -> None:
    env = tmp_env(tmp_path, **LIMITS)
    erin, frank = create_users("erin@example.com", "frank@example.com", cwd=tmp_path, env=env)
    with serving(tmp_path, env) as url:
        session = login(url, "erin@example.com", PASSWORD)
        assert session.status_code == 200, session.text
        token = session.json()["token"]

        line = one_line_error(users("delete", "erin@example.com", cwd=tmp_path, env=env))
        assert "--yes" in line
        assert sorted(r.id for r in listing(tmp_path, env)) == sorted([erin, frank])
        assert me(url, token).status_code == 200
        assert login(url, "erin@example.com", PASSWORD).status_code == 200

        deleted = users("delete", "erin@example.com", "--yes", cwd=tmp_path, env=env)
        assert deleted.returncode == 0, deleted.stderr
        assert deleted.stdout == f"deleted account {erin}\n"

        assert [(r.id, r.email) for r in listing(tmp_path, env)] == [(frank, "frank@example.com")]
        refused = login(url, "erin@example.com", PASSWORD)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_credentials"
        assert me(url, token).status_code == 401
        assert login(url, "frank@example.com", PASSWORD).status_code == 200

    again = users("delete", "erin@example.com", "--yes", cwd=tmp_path, env=env)
    assert one_line_error(again) + "\n" == NO_ACCOUNT
    assert [r.id for r in listing(tmp_path, env)] == [frank]

    # The audit trail keeps the id, never the address; sessions went with the account.
    [(user_id,)] = query(
        tmp_path, "SELECT user_id FROM audit_events WHERE event = ?", "account_deleted"
    )
    assert uuid_column(user_id) == erin
    for row in query(tmp_path, "SELECT * FROM audit_events"):
        assert "erin@example.com" not in repr(row), row
    assert query(
        tmp_path, "SELECT count(*) FROM sessions WHERE user_id = ?", uuid.UUID(erin).hex
    ) == [(0,)]


def test_users_sessions_lists_the_live_sessions_and_end_ends_them(tmp_path: Path) -> None:
    """The admin API's session calls, from the command line (the same domain functions)."""
    env = tmp_env(tmp_path, **LIMITS)
    [kate] = create_users("kate@example.com", cwd=tmp_path, env=env)
    with serving(tmp_path, env) as url:
        tokens = [login(url, "kate@example.com", PASSWORD).json()["token"] for _ in range(2)]
        ended_by_logout = login(url, "kate@example.com", PASSWORD).json()["token"]
        out = httpx.post(
            f"{url}/auth/logout", headers={"Authorization": f"Bearer {ended_by_logout}"}, timeout=30
        )
        assert out.status_code == 204

        listed = users("sessions", "kate@example.com", cwd=tmp_path, env=env)
        assert listed.returncode == 0, listed.stderr
        header, *rows = listed.stdout.splitlines()
        assert header.split() == ["id", "created", "last", "used", "expires"]
        assert len(rows) == 2  # the logged-out one is not live
        ids = {row.split()[0] for row in rows}
        stored = {
            uuid_column(i)
            for (i,) in query(
                tmp_path,
                "SELECT id FROM sessions WHERE user_id = ? AND revoked_at IS NULL",
                uuid.UUID(kate).hex,
            )
        }
        assert ids == stored
        for token in tokens:
            assert token not in listed.stdout

        ended = users("sessions", "kate@example.com", "--end", cwd=tmp_path, env=env)
        assert ended.returncode == 0, ended.stderr
        assert ended.stdout == "ended 2 sessions\n"
        for token in tokens:
            assert me(url, token).status_code == 401
        empty = users("sessions", "kate@example.com", cwd=tmp_path, env=env)
        assert empty.stdout.splitlines()[1:] == []
        assert login(url, "kate@example.com", PASSWORD).status_code == 200  # not disabled
    unknown = users("sessions", "nobody@example.com", "--end", cwd=tmp_path, env=env)
    assert unknown.stderr == NO_ACCOUNT
    [(detail,)] = query(
        tmp_path, "SELECT detail FROM audit_events WHERE event = ?", "sessions_ended_by_operator"
    )
    assert json.loads(str(detail)) == {"sessions_revoked": 2}  # no admin key: the CLI


# -- reset-link ---------------------------------------------------------------------------------


def test_users_reset_link_prints_a_single_use_link_that_newer_links_revoke(
    tmp_path: Path,
) -> None:
    env = tmp_env(tmp_path, CHASER_AUTH_PUBLIC_URL=PUBLIC_URL, **LIMITS)
    gina, ivy = create_users("gina@example.com", "ivy@example.com", cwd=tmp_path, env=env)
    # A one-second link for another account, checked at the end once it has expired.
    started = time.monotonic()
    short = reset_link(tmp_path, env | {"CHASER_AUTH_RESET_TOKEN_TTL": "1"}, "ivy@example.com")
    first = reset_link(tmp_path, env, "gina@example.com")

    with serving(tmp_path, env) as url:
        used = confirm(url, first, NEW_PASSWORD)
        assert used.status_code == 200, used.text
        assert used.json()["user_id"] == gina
        assert confirm(url, first, THIRD_PASSWORD).status_code == 400  # single use
        assert login(url, "gina@example.com", NEW_PASSWORD).status_code == 200

        second = reset_link(tmp_path, env, "gina@example.com")
        third = reset_link(tmp_path, env, "gina@example.com")
        assert len({first, second, third}) == 3
        revoked = confirm(url, second, THIRD_PASSWORD)
        assert revoked.status_code == 400
        assert revoked.json()["error"]["code"] == "invalid_token"
        assert confirm(url, third, THIRD_PASSWORD).status_code == 200
        assert login(url, "gina@example.com", THIRD_PASSWORD).status_code == 200
        assert login(url, "gina@example.com", NEW_PASSWORD).status_code == 401

        time.sleep(max(0.0, started + 2.5 - time.monotonic()))
        assert confirm(url, short, THIRD_PASSWORD).status_code == 400  # expired
        assert login(url, "ivy@example.com", PASSWORD).status_code == 200

    # Only digests are stored: no token appears anywhere in the database's files.
    stored = b"".join(p.read_bytes() for p in sorted((tmp_path / "state").glob("auth.db*")))
    assert stored
    for token in (short, first, second, third):
        assert token.encode() not in stored

    rows = query(
        tmp_path,
        "SELECT u.email, t.created_at, t.expires_at, t.used_at, t.revoked_at, t.outbox_id "
        "FROM reset_tokens t JOIN users u ON u.id = t.user_id ORDER BY t.created_at",
    )
    assert [r[0] for r in rows] == ["ivy@example.com"] + ["gina@example.com"] * 3
    for email, created_at, expires_at, _, _, outbox_id in rows:
        ttl = datetime.fromisoformat(str(expires_at)) - datetime.fromisoformat(str(created_at))
        assert ttl == timedelta(seconds=1 if email == "ivy@example.com" else 1800), (email, ttl)
        assert outbox_id is None  # handed over, not mailed
    (_, _, _, ivy_used, ivy_revoked, _), *_ = rows
    assert (ivy_used, ivy_revoked) == (None, None)  # refused because it expired

    events = query(
        tmp_path,
        "SELECT user_id, subject, detail FROM audit_events WHERE event = ? ORDER BY id",
        "reset_link_issued_by_operator",
    )
    assert len(events) == 4
    assert [uuid_column(u) for u, _, _ in events] == [ivy] + [gina] * 3
    assert not query(tmp_path, "SELECT 1 FROM outbox WHERE kind = 'password_reset_request'")


def test_users_reset_link_refuses_a_disabled_account_and_an_unknown_address(
    tmp_path: Path,
) -> None:
    env = tmp_env(tmp_path, CHASER_AUTH_PUBLIC_URL=PUBLIC_URL)
    hank = create_user("hank@example.com", cwd=tmp_path, env=env)
    assert users("disable", "hank@example.com", cwd=tmp_path, env=env).returncode == 0

    disabled, unknown = cli_parallel(
        [("users", "reset-link", "hank@example.com"), ("users", "reset-link", "no@example.com")],
        cwd=tmp_path,
        env=env,
    )
    assert "disabled" in one_line_error(disabled)
    assert PUBLIC_URL not in disabled.stderr
    assert one_line_error(unknown) + "\n" == NO_ACCOUNT
    assert unknown.stderr == NO_ACCOUNT

    assert query(tmp_path, "SELECT count(*) FROM reset_tokens") == [(0,)]
    events = [e for (e,) in query(tmp_path, "SELECT event FROM audit_events")]
    assert "reset_link_issued_by_operator" not in events
    assert [r.id for r in listing(tmp_path, env)] == [hank]


def test_users_create_invite_mails_a_link_that_sets_the_first_password(tmp_path: Path) -> None:
    """`users create EMAIL --invite` (the admin API's invitation, from the command line): an
    account with no password, and a mail the worker sends with a link to choose one."""
    env = tmp_env(tmp_path, CHASER_AUTH_PUBLIC_URL=PUBLIC_URL, **LIMITS)
    both = users("create", "jo@example.com", "--invite", "--password-stdin", cwd=tmp_path, env=env)
    assert "--invite" in one_line_error(both)
    invited = users("create", "jo@example.com", "--invite", cwd=tmp_path, env=env)
    assert invited.returncode == 0, invited.stderr
    created = re.fullmatch(r"created account ([0-9a-f-]{36}); .*\n", invited.stdout)
    assert created, invited.stdout
    again = users("create", "JO@example.com", "--invite", cwd=tmp_path, env=env)
    assert "already exists" in one_line_error(again)
    [row] = listing(tmp_path, env)
    assert (row.id, row.email, row.verified, row.active) == (
        created.group(1),
        "jo@example.com",
        "yes",
        "yes",
    )
    assert query(tmp_path, "SELECT password_hash FROM users") == [(None,)]

    mail_dir = tmp_path / "state" / "mail"
    with serving(tmp_path, env) as url:  # its embedded worker sends the invitation
        [eml] = poll(lambda: sorted(mail_dir.glob("*.eml")), "the invitation in the mail folder")
        message = read_eml(eml)
        assert message["Subject"] == "Set a password for your new account"
        text = text_of(message)
        token = re.search(rf"{PUBLIC_URL}/reset-password#token=([A-Za-z0-9_-]{{43}})", text)
        assert token, text
        assert login(url, "jo@example.com", PASSWORD).status_code == 401
        assert confirm(url, token.group(1), PASSWORD).status_code == 200
        assert login(url, "jo@example.com", PASSWORD).status_code == 200
    [(detail,)] = query(
        tmp_path, "SELECT detail FROM audit_events WHERE event = ?", "account_invited"
    )
    assert detail is None  # the command line's operator holds the server: no key to name


# -- unknown addresses and help -----------------------------------------------------------------


def test_every_users_action_on_an_unknown_address_exits_1_with_one_line(tmp_path: Path) -> None:
    env = tmp_env(tmp_path)
    create_user("known@example.com", cwd=tmp_path, env=env)
    commands = [
        ("users", "disable", "nobody@example.com"),
        ("users", "enable", "nobody@example.com"),
        ("users", "delete", "nobody@example.com", "--yes"),
        ("users", "reset-link", "nobody@example.com"),
        ("users", "disable", "not-an-email"),
    ]
    for args, done in zip(commands, cli_parallel(commands, cwd=tmp_path, env=env), strict=True):
        assert done.returncode == 1, args
        assert done.stdout == "", args
        assert done.stderr == NO_ACCOUNT, (args, done.stderr)
    assert [(r.email, r.active) for r in listing(tmp_path, env)] == [("known@example.com", "yes")]


def test_users_help_lists_every_action(tmp_path: Path) -> None:
    env = tmp_env(tmp_path)
    actions = ["create", "list", "disable", "enable", "sessions", "delete", "reset-link"]
    invocations = [("users", "--help"), *(("users", a, "--help") for a in actions)]
    results = cli_parallel(invocations, cwd=tmp_path, env=env)
    for args, done in zip(invocations, results, strict=True):
        assert done.returncode == 0, (args, done.stderr)
        assert done.stderr == "", args
    overview = results[0].stdout
    for action in actions:
        assert re.search(rf"(?m)^\s+{re.escape(action)}\s", overview), (action, overview)
    delete_help = results[1 + actions.index("delete")].stdout
    assert "--yes" in delete_help
    assert not (tmp_path / "state").exists()  # help touches no database
