"""`chaser-auth doctor`: check a configuration before it serves anyone, and say what to fix.

Each check gives ok, warn (works, but not how production should run) or fail (will not work).
Nothing is changed: the database is not migrated, no mail is sent (SMTP gets a NOOP), no
secret key file is created.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import urlsplit

import redis.asyncio
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from chaser_auth.config import MIN_SECRET_BITS, MIN_SECRET_LENGTH, Settings, estimated_bits
from chaser_auth.mail.transport import DeliveryError, SmtpTransport
from chaser_auth.store import migrate
from chaser_auth.store.engine import create_engine, sqlite_path

OK, WARN, FAIL = "ok", "warn", "FAIL"
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
_NOT_OWNERS = 0o077  # any permission for the group or others
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class Finding:
    level: str
    topic: str
    text: str


def _is_local(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host in _LOCAL_HOSTS or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_urls(settings: Settings) -> list[Finding]:
    found = []
    for name, url in (("PUBLIC_URL", settings.public_url), ("APP_URL", settings.app_url)):
        if url is None:
            found.append(Finding(WARN, name, "not set: the pages only say what to do next"))
        elif urlsplit(url).scheme == "https":
            found.append(Finding(OK, name, url))
        elif _is_local(url):
            found.append(Finding(WARN, name, f"{url} is local: fine for development only"))
        else:
            found.append(
                Finding(
                    FAIL,
                    name,
                    f"{url} is plain http: links would carry tokens unencrypted; use https",
                )
            )
    return found


def check_secret(settings: Settings) -> Finding:
    if settings.secret_key is not None:
        return Finding(OK, "SECRET_KEY", "set (from the environment)")
    path = settings.secret_key_file
    if not path.exists():
        return Finding(
            WARN,
            "SECRET_KEY",
            f"not set; {path} will be generated at the first start — every process must use "
            "the same key, so set CHASER_AUTH_SECRET_KEY when running more than one",
        )
    problems = []
    key = path.read_bytes().strip()
    if len(key) < MIN_SECRET_LENGTH:
        problems.append(f"holds fewer than {MIN_SECRET_LENGTH} characters")
    elif estimated_bits(key.decode("latin-1")) < MIN_SECRET_BITS:
        problems.append(f"is too predictable (under {MIN_SECRET_BITS} bits estimated)")
    if path.stat().st_mode & _NOT_OWNERS:
        problems.append(f"is open to group or others: chmod 600 {shlex.quote(str(path))}")
    if problems:
        return Finding(FAIL, "SECRET_KEY", f"{path} " + "; ".join(problems))
    return Finding(OK, "SECRET_KEY", f"read from {path}")


def _open_to_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & _NOT_OWNERS)
    except FileNotFoundError:
        return False


def check_files(settings: Settings) -> Finding:
    """The files that hold accounts and live links: the SQLite file with its journals, the
    mail folder and its `.eml` files. New ones are created private; older ones (made before
    that, or by hand) keep their mode, so say which are open and the chmod that closes them.
    The secret key file is `check_secret`'s (a FAIL: anyone who reads it can mint links)."""
    files: list[str] = []
    folders: list[str] = []
    database = sqlite_path(settings.database_url)
    if database is not None:
        for path in (database, *(Path(f"{database}{end}") for end in _SQLITE_SIDE_FILES)):
            if _open_to_others(path):
                files.append(shlex.quote(str(path)))
    mail = settings.mail_dir
    if _open_to_others(mail):
        folders.append(shlex.quote(str(mail)))
    if mail.is_dir() and any(_open_to_others(eml) for eml in mail.glob("*.eml")):
        files.append(f"{shlex.quote(str(mail))}/*.eml")
    if not files and not folders:
        return Finding(OK, "FILES", "the database and mail on disk are private to their owner")
    commands = [f"chmod 600 {' '.join(files)}"] if files else []
    commands += [f"chmod 700 {' '.join(folders)}"] if folders else []
    return Finding(
        WARN,
        "FILES",
        f"{', '.join(files + folders)} open to group or others (addresses, password hashes, "
        f"live links): run {'; '.join(commands)}",
    )


def check_mail_from(settings: Settings) -> Finding:
    domain = parseaddr(settings.mail_from)[1].rpartition("@")[2]
    if domain in ("localhost", "") or domain.endswith(".localhost"):
        return Finding(WARN, "MAIL_FROM", f"{settings.mail_from}: receivers will reject it")
    return Finding(OK, "MAIL_FROM", settings.mail_from)


async def check_database(settings: Settings) -> Finding:
    heads = set(
        ScriptDirectory.from_config(migrate.alembic_config(settings.database_url)).get_heads()
    )
    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda sync: sync.dialect.get_table_names(sync))
            current = set()
            if "alembic_version" in tables:
                rows = await connection.execute(text("SELECT version_num FROM alembic_version"))
                current = {row[0] for row in rows}
    except (SQLAlchemyError, OSError) as exc:
        reason = type(getattr(exc, "orig", None) or exc).__name__  # the driver's own error
        return Finding(FAIL, "DATABASE", f"cannot use it: {reason}")
    finally:
        await engine.dispose()
    if current == heads:
        return Finding(OK, "DATABASE", f"reachable, schema at {', '.join(sorted(heads))}")
    return Finding(
        FAIL,
        "DATABASE",
        f"reachable, but the schema is at {', '.join(sorted(current)) or 'nothing'} and this "
        f"release needs {', '.join(sorted(heads))}: run `chaser-auth migrate`",
    )


async def check_smtp(settings: Settings) -> Finding:
    if not settings.smtp_url:
        return Finding(
            WARN, "SMTP_URL", f"not set: mail is written to {settings.mail_dir}, not sent"
        )
    transport = SmtpTransport(settings.smtp_url, settings.smtp_timeout)
    where = f"{transport.hostname}:{transport.port}"
    try:
        await transport.check()
    except DeliveryError as exc:
        return Finding(FAIL, "SMTP_URL", f"{where} did not accept a NOOP ({exc.code})")
    return Finding(OK, "SMTP_URL", f"{where} answers NOOP")


async def check_redis(settings: Settings) -> Finding:
    if not settings.redis_url:
        return Finding(
            WARN,
            "REDIS_URL",
            "not set: per-IP, login and sign-up limits count per process (fine for one "
            "process); the per-address mail limit is kept in the database",
        )
    client = redis.asyncio.Redis.from_url(
        settings.redis_url, socket_timeout=2, socket_connect_timeout=2
    )
    try:
        await client.ping()
    except (redis.RedisError, OSError) as exc:
        return Finding(FAIL, "REDIS_URL", f"no answer to PING ({type(exc).__name__})")
    finally:
        await client.aclose()
    return Finding(OK, "REDIS_URL", "answers PING")


def check_admin_keys(settings: Settings) -> Finding:
    """The admin API's keys (names only: the configuration holds digests, never keys)."""
    names = sorted(settings.admin_key_digests)
    if not names:
        return Finding(OK, "ADMIN_KEYS", "none: the admin API refuses every call")
    listed = f"{len(names)} key{'s' if len(names) != 1 else ''} ({', '.join(names)})"
    if not settings.operator_address:
        return Finding(
            WARN,
            "ADMIN_KEYS",
            f"{listed}, but CHASER_AUTH_OPERATOR_ADDRESS is empty: the admin API is not served",
        )
    return Finding(OK, "ADMIN_KEYS", f"{listed}; admin API on {settings.operator_address}")


def check_webhooks(settings: Settings) -> Finding:
    """The webhook endpoints, by name, host and event count (never a secret, nor the rest of a
    URL, which may carry credentials); plain http to another machine is a warning."""
    endpoints = settings.webhook_endpoints
    if not endpoints:
        return Finding(OK, "WEBHOOKS", "none configured")
    shown = []
    plain = []
    for endpoint in endpoints:
        host = urlsplit(endpoint.url).hostname or "?"
        count = len(endpoint.events)
        shown.append(f"{endpoint.name} → {host} ({count} event type{'s' if count != 1 else ''})")
        if urlsplit(endpoint.url).scheme != "https" and not _is_local(endpoint.url):
            plain.append(endpoint.name)
    listed = "; ".join(shown)
    if plain:
        return Finding(
            WARN,
            "WEBHOOKS",
            f"{listed} — {', '.join(plain)} on plain http: events (account ids, addresses) "
            "travel unencrypted; the signature keeps them from being forged, not from being read",
        )
    return Finding(OK, "WEBHOOKS", listed)


async def examine(settings: Settings) -> list[Finding]:
    return [
        *check_urls(settings),
        check_secret(settings),
        check_files(settings),
        check_mail_from(settings),
        check_admin_keys(settings),
        check_webhooks(settings),
        await check_database(settings),
        await check_smtp(settings),
        await check_redis(settings),
    ]
