"""`chaser-auth doctor`: every check as a real subprocess in a fresh working directory, with the
embedded defaults (relative `./var/...` paths, so everything lands in the test's tmp dir).

Doctor changes nothing: no secret key file, no migration, no mail (SMTP only gets a NOOP).
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

from chaser_auth.config import new_webhook_secret
from tests.conftest import REDIS, Smtp, answers, free_port, require
from tests.test_cli import base_env, cli

LINE = re.compile(r"(ok|warn|FAIL) +([A-Z_]+) +(\S.*)")
TOPICS = {
    "PUBLIC_URL",
    "APP_URL",
    "SECRET_KEY",
    "FILES",
    "MAIL_FROM",
    "ADMIN_KEYS",
    "WEBHOOKS",
    "DATABASE",
    "SMTP_URL",
    "REDIS_URL",
}
SUMMARY_FAIL = "fix the FAIL lines above"
SUMMARY_OK = "nothing blocks serving"
# A key that passes the settings' own checks: 32+ characters, not predictable.
GOOD_KEY = "b3Jx-9TqLm_2VwZc7KpYs4NdHf8RgA1eUo6iE0tX5jQ"


@dataclass
class Report:
    done: subprocess.CompletedProcess[str]
    findings: dict[str, tuple[str, str]]  # topic -> (level, text)

    def level(self, topic: str) -> str:
        return self.findings[topic][0]

    def text(self, topic: str) -> str:
        return self.findings[topic][1]


def doctor(tmp_path: Path, **extra: str) -> Report:
    """Run `chaser-auth doctor` in tmp_path with the defaults plus `extra`; parse its output."""
    done = cli("doctor", cwd=tmp_path, env=base_env(**extra))  # cli() asserts: no traceback
    lines = done.stdout.splitlines()
    assert lines, (done.stdout, done.stderr)
    *body, summary = lines
    findings: dict[str, tuple[str, str]] = {}
    for line in body:
        parsed = LINE.fullmatch(line)
        assert parsed, f"not `LEVEL  TOPIC  text`: {line!r}\n{done.stdout}"
        level, topic, text = parsed.groups()
        assert topic not in findings, f"{topic} reported twice:\n{done.stdout}"
        findings[topic] = (level, text)
    assert set(findings) == TOPICS, done.stdout
    failed = any(level == "FAIL" for level, _ in findings.values())
    assert summary == (SUMMARY_FAIL if failed else SUMMARY_OK), done.stdout
    assert done.returncode == (1 if failed else 0), (done.returncode, done.stdout, done.stderr)
    return Report(done, findings)


def sqlite_tables(path: Path) -> list[str]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return [row[0] for row in rows]


# -- defaults -----------------------------------------------------------------------------------


def test_fresh_directory_fails_on_the_unmigrated_database_and_changes_nothing(
    tmp_path: Path,
) -> None:
    report = doctor(tmp_path)

    assert report.done.returncode == 1
    assert report.level("DATABASE") == "FAIL", report.done.stdout
    assert "chaser-auth migrate" in report.text("DATABASE")
    assert report.level("PUBLIC_URL") == "warn"
    assert "http://localhost:8000" in report.text("PUBLIC_URL")
    assert report.level("APP_URL") == "warn"
    assert report.level("SMTP_URL") == "warn"
    assert report.level("REDIS_URL") == "warn"
    assert report.level("MAIL_FROM") == "warn"
    assert "localhost" in report.text("MAIL_FROM")
    assert report.level("SECRET_KEY") == "warn"
    assert "var/secret_key" in report.text("SECRET_KEY")
    assert report.level("FILES") == "ok"

    # Nothing it should not have created: no secret key, no mail directory.
    var = tmp_path / "var"
    assert not (var / "secret_key").exists()
    assert not list(var.glob(".secret_key*"))  # nor a half-made temporary key file
    assert not (var / "mail").exists()
    # Connecting to SQLite creates `var/` and the database file (the engine makes the parent
    # directory, and the WAL switch writes the header). Acceptable only while it holds no table.
    database = var / "chaser-auth.db"
    assert database.exists(), "doctor is expected to create the (empty) SQLite file"
    assert sqlite_tables(database) == []

    # Running it again gives the same verdict (it did not migrate on the first run).
    again = doctor(tmp_path)
    assert again.level("DATABASE") == "FAIL"
    assert sqlite_tables(database) == []


def test_after_migrate_the_database_is_ok_and_only_warnings_remain(tmp_path: Path) -> None:
    migrated = cli("migrate", cwd=tmp_path, env=base_env())
    assert migrated.returncode == 0, migrated.stderr

    report = doctor(tmp_path)

    assert report.level("DATABASE") == "ok", report.done.stdout
    assert report.text("DATABASE").startswith("reachable, schema at ")
    assert {level for level, _ in report.findings.values()} == {"ok", "warn"}
    assert report.done.returncode == 0
    assert not (tmp_path / "var" / "secret_key").exists()


# -- URLs ---------------------------------------------------------------------------------------


def test_public_url_over_plain_http_elsewhere_fails_and_https_is_ok(tmp_path: Path) -> None:
    plain = doctor(tmp_path, CHASER_AUTH_PUBLIC_URL="http://auth.example.com")
    assert plain.level("PUBLIC_URL") == "FAIL", plain.done.stdout
    assert "https" in plain.text("PUBLIC_URL")
    assert "http://auth.example.com" in plain.text("PUBLIC_URL")
    assert plain.done.returncode == 1

    secure = doctor(
        tmp_path,
        CHASER_AUTH_PUBLIC_URL="https://auth.example.com",
        CHASER_AUTH_APP_URL="https://app.example.com",
    )
    assert secure.findings["PUBLIC_URL"] == ("ok", "https://auth.example.com")
    assert secure.findings["APP_URL"] == ("ok", "https://app.example.com")


def test_app_url_over_plain_http_fails_and_loopback_only_warns(tmp_path: Path) -> None:
    plain = doctor(tmp_path, CHASER_AUTH_APP_URL="http://app.example.com")
    assert plain.level("APP_URL") == "FAIL", plain.done.stdout
    assert "https" in plain.text("APP_URL")

    for local in ("http://127.0.0.1:3000", "http://[::1]:3000", "http://app.localhost"):
        loopback = doctor(tmp_path, CHASER_AUTH_PUBLIC_URL=local, CHASER_AUTH_APP_URL=local)
        assert loopback.level("PUBLIC_URL") == "warn", (local, loopback.done.stdout)
        assert loopback.level("APP_URL") == "warn", (local, loopback.done.stdout)


# -- SMTP ---------------------------------------------------------------------------------------


def test_smtp_that_answers_is_ok_and_gets_no_message(tmp_path: Path, smtp: Smtp) -> None:
    report = doctor(tmp_path, CHASER_AUTH_SMTP_URL=smtp.url)

    assert report.findings["SMTP_URL"] == ("ok", f"127.0.0.1:{smtp.port} answers NOOP")
    assert smtp.sink.messages == []
    assert smtp.sink.refused == []


def test_smtp_where_nothing_listens_fails_with_a_reason_code(tmp_path: Path, smtp: Smtp) -> None:
    port = free_port()
    report = doctor(tmp_path, CHASER_AUTH_SMTP_URL=f"smtp://127.0.0.1:{port}")

    assert report.level("SMTP_URL") == "FAIL", report.done.stdout
    reason = re.fullmatch(
        rf"127\.0\.0\.1:{port} did not accept a NOOP \((smtp_\w+)\)", report.text("SMTP_URL")
    )
    assert reason, report.text("SMTP_URL")
    assert report.done.returncode == 1
    assert smtp.sink.messages == []  # the running sink was not contacted either


# -- Redis --------------------------------------------------------------------------------------


def test_redis_that_answers_ping_is_ok(tmp_path: Path) -> None:
    require(answers(REDIS, 6379), f"no Redis server at {REDIS}")
    report = doctor(tmp_path, CHASER_AUTH_REDIS_URL=REDIS)

    assert report.findings["REDIS_URL"] == ("ok", "answers PING")


def test_redis_where_nothing_listens_fails(tmp_path: Path) -> None:
    report = doctor(tmp_path, CHASER_AUTH_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")

    assert report.level("REDIS_URL") == "FAIL", report.done.stdout
    assert re.fullmatch(r"no answer to PING \(\w+\)", report.text("REDIS_URL"))
    assert report.done.returncode == 1


# -- admin keys ---------------------------------------------------------------------------------


def test_admin_keys_are_reported_by_name_and_an_unserved_admin_api_warns(tmp_path: Path) -> None:
    none = doctor(tmp_path)
    assert none.level("ADMIN_KEYS") == "ok"
    assert "refuses every call" in none.text("ADMIN_KEYS")

    pairs = f"support:{'a' * 64},billing:{'b' * 64}"
    served = doctor(tmp_path, CHASER_AUTH_ADMIN_KEYS=pairs)
    assert served.level("ADMIN_KEYS") == "ok", served.done.stdout
    assert served.text("ADMIN_KEYS").startswith(
        "2 keys (billing, support); admin API on 127.0.0.1:"
    )
    assert "a" * 64 not in served.done.stdout  # names, never digests

    off = doctor(tmp_path, CHASER_AUTH_ADMIN_KEYS=pairs, CHASER_AUTH_OPERATOR_ADDRESS="")
    assert off.level("ADMIN_KEYS") == "warn", off.done.stdout
    assert "not served" in off.text("ADMIN_KEYS")


# -- webhooks -----------------------------------------------------------------------------------


def test_webhook_endpoints_are_reported_by_name_and_host_and_plain_http_warns(
    tmp_path: Path,
) -> None:
    assert doctor(tmp_path).text("WEBHOOKS") == "none configured"
    secret = new_webhook_secret()
    hooks = json.dumps(
        [
            {"name": "app", "url": "https://app.example.com/in?token=abc", "secret": secret},
            {
                "name": "local",
                "url": "http://127.0.0.1:9000/in",
                "secret": secret,
                "events": ["account.deleted"],
            },
        ]
    )
    report = doctor(tmp_path, CHASER_AUTH_WEBHOOKS=hooks)
    assert report.level("WEBHOOKS") == "ok", report.done.stdout
    assert report.text("WEBHOOKS") == (
        "app → app.example.com (9 event types); local → 127.0.0.1 (1 event type)"
    )
    assert secret not in report.done.stdout and "token=abc" not in report.done.stdout
    plain = json.dumps([{"name": "crm", "url": "http://crm.example.com/in", "secret": secret}])
    warned = doctor(tmp_path, CHASER_AUTH_WEBHOOKS=plain)
    assert warned.level("WEBHOOKS") == "warn"
    assert "crm on plain http" in warned.text("WEBHOOKS")


# -- the secret ---------------------------------------------------------------------------------


def test_secret_from_the_environment_is_ok(tmp_path: Path) -> None:
    report = doctor(tmp_path, CHASER_AUTH_SECRET_KEY=GOOD_KEY)

    assert report.level("SECRET_KEY") == "ok", report.done.stdout
    assert GOOD_KEY not in report.done.stdout  # the key itself is never printed
    assert not (tmp_path / "var" / "secret_key").exists()


def _key_file(tmp_path: Path, content: str, mode: int) -> Path:
    path = tmp_path / "var" / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    path.chmod(mode)
    return path


def test_secret_file_readable_by_others_fails_and_says_chmod(tmp_path: Path) -> None:
    path = _key_file(tmp_path, GOOD_KEY + "\n", 0o644)

    report = doctor(tmp_path)

    assert report.level("SECRET_KEY") == "FAIL", report.done.stdout
    assert "chmod 600 var/secret_key" in report.text("SECRET_KEY")
    assert GOOD_KEY not in report.done.stdout
    assert report.done.returncode == 1
    # Left as it was: doctor reports, it does not fix.
    assert path.stat().st_mode & 0o777 == 0o644
    assert path.read_text() == GOOD_KEY + "\n"


def test_secret_file_too_short_fails(tmp_path: Path) -> None:
    path = _key_file(tmp_path, "short\n", 0o600)

    report = doctor(tmp_path)

    assert report.level("SECRET_KEY") == "FAIL", report.done.stdout
    assert "fewer than 32" in report.text("SECRET_KEY")
    assert report.done.returncode == 1
    assert path.read_text() == "short\n"


def test_secret_file_long_but_predictable_fails(tmp_path: Path) -> None:
    _key_file(tmp_path, "k" * 48 + "\n", 0o600)

    report = doctor(tmp_path)

    assert report.level("SECRET_KEY") == "FAIL", report.done.stdout
    assert "too predictable" in report.text("SECRET_KEY")
    assert "k" * 48 not in report.done.stdout


def test_secret_file_private_and_long_enough_is_ok(tmp_path: Path) -> None:
    _key_file(tmp_path, GOOD_KEY + "\n", 0o600)

    report = doctor(tmp_path)

    assert report.level("SECRET_KEY") == "ok", report.done.stdout
    assert GOOD_KEY not in report.done.stdout


# -- files on disk ------------------------------------------------------------------------------


def made(path: Path, mode: int, *, folder: bool = False) -> None:
    """A file or folder with exactly `mode`, whatever the umask of the test run."""
    if folder:
        path.mkdir(parents=True)
    else:
        path.touch()
    path.chmod(mode)


def test_loose_database_and_mail_files_warn_with_the_chmod_that_closes_them(
    tmp_path: Path,
) -> None:
    migrated = cli("migrate", cwd=tmp_path, env=base_env())
    assert migrated.returncode == 0, migrated.stderr
    var = tmp_path / "var"
    database = var / "chaser-auth.db"
    assert database.stat().st_mode & 0o777 == 0o600  # made private; opened up by hand below
    database.chmod(0o644)
    wal = var / "chaser-auth.db-wal"  # left behind by a crash, as SQLite made it: 0644 then
    made(wal, 0o644)
    mail = var / "mail"
    made(mail, 0o755, folder=True)
    made(mail / "private.eml", 0o600)
    made(mail / "loose.eml", 0o640)

    report = doctor(tmp_path)

    assert report.level("FILES") == "warn", report.done.stdout
    assert report.done.returncode == 0  # it works; production should not run this way
    text = report.text("FILES")
    for path in ("var/chaser-auth.db", "var/chaser-auth.db-wal", "var/mail", "var/mail/*.eml"):
        assert path in text, (path, text)
    assert "chaser-auth.db-shm" not in text  # not there: not named
    _, run, command = text.partition(": run ")
    assert run, text
    assert (
        command
        == "chmod 600 var/chaser-auth.db var/chaser-auth.db-wal var/mail/*.eml; chmod 700 var/mail"
    )
    # Doctor changed nothing ...
    assert database.stat().st_mode & 0o777 == 0o644
    assert mail.stat().st_mode & 0o777 == 0o755
    # ... and the command it gave closes every one of them.
    subprocess.run(["/bin/sh", "-c", command], cwd=tmp_path, check=True)
    assert doctor(tmp_path).level("FILES") == "ok"


def test_a_group_readable_mail_file_alone_warns(tmp_path: Path) -> None:
    mail = tmp_path / "var" / "mail"
    made(mail, 0o700, folder=True)
    made(mail / "a.eml", 0o640)

    report = doctor(tmp_path)

    assert report.findings["FILES"] == (
        "warn",
        "var/mail/*.eml open to group or others (addresses, password hashes, live links): "
        "run chmod 600 var/mail/*.eml",
    )


# -- PostgreSQL ---------------------------------------------------------------------------------


def test_unreachable_postgresql_fails_cannot_connect(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x"

    report = doctor(tmp_path, CHASER_AUTH_DATABASE_URL=url)

    assert report.level("DATABASE") == "FAIL", report.done.stdout
    assert report.text("DATABASE").startswith("cannot use it"), report.text("DATABASE")
    assert report.done.returncode == 1
    assert not (tmp_path / "var").exists()  # nothing made on disk for a server database


# -- configuration that cannot be parsed --------------------------------------------------------


def test_unparsable_configuration_exits_2_without_a_report(tmp_path: Path) -> None:
    done = cli("doctor", cwd=tmp_path, env=base_env(CHASER_AUTH_PUBLIC_URL="ftp://x"))

    assert done.returncode == 2
    assert "CHASER_AUTH_PUBLIC_URL" in done.stderr
    assert done.stdout == ""
