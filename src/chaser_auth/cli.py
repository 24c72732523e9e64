"""`chaser-auth` — serve the API, run the delivery worker, migrate, manage accounts and the outbox.

Configuration comes from CHASER_AUTH_* environment variables and `.env` (docs/configuration.md)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from chaser_auth import __version__
from chaser_auth.config import ConfigurationError, Settings, load_secret_key
from chaser_auth.errors import ChaserError, NotFound
from chaser_auth.logs import configure_logging
from chaser_auth.runtime import Runtime

log = logging.getLogger("chaser_auth")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chaser-auth",
        description="Self-hostable Chaser Core API auth service (password reset, sessions). "
        "Configured by CHASER_AUTH_* environment variables and a .env file.",
    )
    parser.add_argument("--version", action="version", version=f"chaser-auth {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="serve the HTTP API (applies pending migrations; runs the mail worker in-process)",
        description="Serve the HTTP API. Applies pending migrations first and, unless "
        "--no-worker is given, runs the mail delivery worker in each API process. /metrics "
        "(with /healthz and /readyz) is served apart, on CHASER_AUTH_OPERATOR_ADDRESS "
        "(default 127.0.0.1:8001; empty: off).",
    )
    serve.add_argument(
        "--host",
        help="address to bind (default: CHASER_AUTH_HOST, else 127.0.0.1)",
    )
    serve.add_argument(
        "--port",
        type=int,
        help="port to bind (default: CHASER_AUTH_PORT, else 8000)",
    )
    serve.add_argument("--workers", type=int, default=1, help="API processes (default 1)")
    serve.add_argument(
        "--no-worker", action="store_true", help="do not run the delivery worker in-process"
    )

    commands.add_parser(
        "worker",
        help="run the mail delivery worker alone",
        description="Run the delivery "
        "worker alone (for scale-out; start as many as you like on one database). Its "
        "/metrics, /healthz and /readyz are served on CHASER_AUTH_OPERATOR_ADDRESS (default "
        "127.0.0.1:8001; empty: off): give each process on a host an address of its own.",
    )
    migrate = commands.add_parser(
        "migrate",
        help="apply schema migrations",
        description="Apply pending schema "
        "migrations. Idempotent and safe to run from several processes at once.",
    )
    migrate.add_argument(
        "--quiet", action="store_true", help="print nothing unless something goes wrong"
    )

    admin_key = commands.add_parser(
        "admin-key",
        help="make a key for the admin API and print the setting that admits it",
        description="Make a new random key for the admin API on the operator listener and "
        "print it, with the name:digest pair to add to CHASER_AUTH_ADMIN_KEYS (comma-separated "
        "with the others). Only the digest goes into the configuration; the key is printed "
        "once, for the caller, and cannot be shown again. To replace a key, add a new one, "
        "move the caller to it, then remove the old pair. Needs no database.",
    )
    admin_key.add_argument("name", help="the name the audit trail records for the key's calls")

    users = commands.add_parser("users", help="manage accounts").add_subparsers(
        dest="users_command", required=True, metavar="ACTION"
    )
    create = users.add_parser(
        "create",
        help="create an active account",
        description="Create an active, verified "
        "account. The password is read from standard input with --password-stdin, otherwise "
        "asked for twice on the terminal; with --invite the account has none, and the "
        "delivery worker mails the address a link to choose one.",
    )
    create.add_argument("email")
    create.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    create.add_argument(
        "--invite",
        action="store_true",
        help="no password: mail the address a link to choose one (valid for "
        "CHASER_AUTH_INVITATION_TTL), sent by the delivery worker",
    )
    users.add_parser("list", help="list accounts", description="List every account, oldest first.")
    for action, text in (
        ("disable", "disable an account: no login, no reset mail; its sessions and links end"),
        ("enable", "enable a disabled account again"),
    ):
        users.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        users.choices[action].add_argument("email")
    sessions = users.add_parser(
        "sessions",
        help="list an account's live sessions, or end them all with --end",
        description="List the account's live sessions (id, created, last used, expires; never "
        "a token), most recently used first. With --end, end every one of them instead and "
        "print how many; the account's next request with any of them is refused.",
    )
    sessions.add_argument("email")
    sessions.add_argument("--end", action="store_true", help="end every session of the account")
    delete = users.add_parser(
        "delete",
        help="delete an account with its sessions and links",
        description="Delete an account with its sessions and links. The audit trail keeps "
        "its id (never its address).",
    )
    delete.add_argument("email")
    delete.add_argument("--yes", action="store_true", help="really delete (required)")
    reset_link = users.add_parser(
        "reset-link",
        help="print a password-reset link for support staff to hand over",
        description="Print a password-reset link for the account, for support staff to hand "
        "over. It follows the rules of an emailed link (single use, CHASER_AUTH_RESET_TOKEN_TTL, "
        "older links revoked) and is recorded in the audit trail.",
    )
    reset_link.add_argument("email")

    outbox = commands.add_parser(
        "outbox", help="inspect and re-drive mail and webhooks"
    ).add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    listing = outbox.add_parser("list", help="list outbox messages (newest last)")
    listing.add_argument(
        "--status", choices=["queued", "done", "dead"], help="only messages in this state"
    )
    retry = outbox.add_parser("retry", help="queue a dead letter for delivery again")
    retry.add_argument("id", type=uuid.UUID)
    outbox.add_parser("purge", help="delete finished messages and dead letters")

    audit = commands.add_parser(
        "audit",
        help="read the audit trail of security events",
        description="Print security events (reset requested, suppressed, sent, consumed, "
        "failed confirms, logins, sessions revoked, operator actions), oldest first. Addresses "
        "appear only as a keyed hash (subject). `audit purge` deletes events older than "
        "CHASER_AUTH_AUDIT_RETENTION_DAYS, and events that name no account older than "
        "CHASER_AUTH_UNMATCHED_RETENTION_HOURS (workers also do it hourly).",
    )
    audit.add_argument("action", nargs="?", choices=["list", "purge"], default="list")
    audit.add_argument("--since", type=_duration, help="only this recent, e.g. 30m, 24h, 7d")
    audit.add_argument("--event", help="only this event, e.g. reset_requested")
    audit.add_argument("--user", type=uuid.UUID, help="only this account id")
    audit.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")

    commands.add_parser(
        "doctor",
        help="check the configuration and the services it names",
        description="Check the configuration (PUBLIC_URL on https, the secret key, files "
        "private to their owner, MAIL_FROM, the admin keys by name, the webhook "
        "endpoints by name and host), "
        "the database (reachable, migrated), SMTP (a NOOP) and Redis (a PING), and say what to "
        "fix. Changes nothing. Exit 1 if anything fails.",
    )
    return parser


def _duration(value: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(value) < 2 or value[-1] not in units or not value[:-1].isdigit():
        raise argparse.ArgumentTypeError("use a number and a unit: 90s, 30m, 24h, 7d")
    return timedelta(seconds=int(value[:-1]) * units[value[-1]])


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        for err in exc.errors():
            name = "CHASER_AUTH_" + "_".join(str(p) for p in err["loc"]).upper()
            print(f"chaser-auth: configuration: {name}: {err['msg']}", file=sys.stderr)
        return 2
    configure_logging(
        settings.log_level, service=args.command in ("serve", "worker"), fmt=settings.log_format
    )
    if args.command in ("users", "outbox", "audit"):
        logging.getLogger("alembic").setLevel(logging.WARNING)  # the implicit migrate is quiet
    if getattr(args, "quiet", False):
        root = logging.getLogger()
        root.setLevel(max(root.level, logging.WARNING))
    try:
        return _dispatch(args, settings)
    except ChaserError as exc:
        print(f"chaser-auth: {exc.text}", file=sys.stderr)
        for detail in exc.details:
            print(f"  - {detail.get('message', detail)}", file=sys.stderr)
        return 1
    except ConfigurationError as exc:
        print(f"chaser-auth: configuration: {exc}", file=sys.stderr)
        return 2
    except (SQLAlchemyError, OSError) as exc:
        # One line, no trace; SQL parameters are hidden by the engine, so no address shows.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"chaser-auth: database unavailable: {reason}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        host = settings.host if args.host is None else args.host
        port = settings.port if args.port is None else args.port
        return serve(settings, host, port, args.workers, not args.no_worker)
    if args.command == "migrate":
        _upgrade(settings.database_url)
        if not args.quiet:
            print("database is at the newest schema")
        return 0
    if args.command == "doctor":
        return asyncio.run(_doctor(settings))
    if args.command == "worker":
        return _upgrade_apart() or _run(settings, _worker)
    if args.command == "admin-key":
        return _admin_key(args.name, settings)
    # Every command that touches the database first brings its schema up to date (idempotent),
    # so that `users create` on a fresh machine works before the first `serve`.
    _upgrade(settings.database_url)
    if args.command == "users" and args.users_command == "create" and args.invite:
        if args.password_stdin:
            raise ChaserError("--invite makes an account without a password: drop one of them.")
        return _run(settings, lambda rt: _invite_user(rt, args.email))
    if args.command == "users" and args.users_command == "create":
        password = _read_password(args.password_stdin)
        return _run(settings, lambda rt: _create_user(rt, args.email, password))
    if args.command == "users":
        if args.users_command == "delete" and not args.yes:
            raise ChaserError("Deleting an account cannot be undone: add --yes to go ahead.")
        return _run(settings, lambda rt: _users(rt, args))
    if args.command == "outbox":
        return _run(settings, lambda rt: _outbox(rt, args))
    if args.command == "audit":
        return _run(settings, lambda rt: _audit(rt, args))
    raise AssertionError(args.command)


def _upgrade_apart() -> int:
    """Apply pending migrations in a child interpreter with this one's environment (so the
    same settings): Alembic (about 10 MB) then never loads into a long-running process.
    Returns the child's exit status; on failure the child has said why, in one line."""
    migrated = subprocess.run(
        [sys.executable, "-m", "chaser_auth", "migrate", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    if migrated.returncode != 0:
        sys.stderr.write(migrated.stderr)
        return migrated.returncode
    for line in migrated.stderr.splitlines():  # warnings: into this process's (JSON) log
        log.warning("migrate: %s", line)
    return 0


def _upgrade(database_url: str) -> None:
    from chaser_auth.store import migrate  # Alembic only where needed

    migrate.upgrade(database_url)


def serve(settings: Settings, host: str, port: int, workers: int, embedded_worker: bool) -> int:
    import uvicorn

    from chaser_auth.app import create_app

    if failed := _check_operator_address(settings, port, workers):
        return failed
    if failed := _upgrade_apart():
        return failed
    load_secret_key(settings)  # create it once here, before any worker process starts
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": None,
        "access_log": False,
        "server_header": False,
        "proxy_headers": False,  # X-Forwarded-For is judged by CHASER_AUTH_TRUSTED_PROXIES
        "timeout_graceful_shutdown": 20,
    }
    log.info(
        "serving on http://%s:%d, /metrics on %s (%d process%s, delivery worker %s)",
        host,
        port,
        f"http://{settings.operator_address}" if settings.operator_address else "no listener",
        workers,
        "" if workers == 1 else "es",
        "in-process" if embedded_worker else "off",
    )
    if settings.redis_url:
        log.info("rate limits are shared through Redis (CHASER_AUTH_REDIS_URL)")
    elif workers > 1:
        log.warning(
            "no CHASER_AUTH_REDIS_URL: each of the %d processes counts the per-IP, login and "
            "sign-up limits in its own memory, so each holds per process — up to %d times it in "
            "sum (the per-address mail limit is kept in the database and holds in sum); set "
            "CHASER_AUTH_REDIS_URL to share them",
            workers,
            workers,
        )
    if workers == 1:
        uvicorn.run(
            create_app(
                settings.model_copy(update={"embedded_worker": embedded_worker}),
                freeze_heap=True,
            ),
            **common,
        )
    else:
        os.environ["CHASER_AUTH_EMBEDDED_WORKER"] = "true" if embedded_worker else "false"
        # Every process writes its metric samples here; a scrape of any one reports the sum.
        own_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
        if own_dir:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="chaser-auth-metrics-")
        try:
            uvicorn.run(
                "chaser_auth.app:app_from_environment", factory=True, workers=workers, **common
            )
        finally:
            if own_dir:
                shutil.rmtree(os.environ.pop("PROMETHEUS_MULTIPROC_DIR"), ignore_errors=True)
    return 0


def _check_operator_address(settings: Settings, port: int, workers: int) -> int:
    """Refuse an operator address that cannot work, in one line, before anything starts: the
    API's own port, port 0 for several processes (each would pick another), or an address
    something already listens on (the processes bind it later, each with SO_REUSEPORT, which
    would not notice another chaser-auth there)."""
    from chaser_auth.api.operator import bind

    if (address := settings.operator_host_port) is None:
        return 0
    name = "CHASER_AUTH_OPERATOR_ADDRESS"
    if address[1] == port:
        raise ConfigurationError(
            f"{name}: port {port} is the API's own (--port or CHASER_AUTH_PORT); pick another"
        )
    if address[1] == 0:
        if workers > 1:
            raise ConfigurationError(
                f"{name}: port 0 would give each of the {workers} processes a port of its own; "
                "name one port"
            )
        return 0
    try:
        bind(*address).close()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(
            f"chaser-auth: cannot listen on {settings.operator_address} ({name}): {reason}",
            file=sys.stderr,
        )
        return 1
    return 0


def _run(settings: Settings, job: Callable[[Runtime], Awaitable[int]]) -> int:
    async def main() -> int:
        runtime = Runtime.build(settings)
        try:
            return await job(runtime)
        finally:
            await runtime.close()

    return asyncio.run(main())


async def _worker(runtime: Runtime) -> int:
    """The delivery worker alone, with its operator listener (`/metrics`, `/healthz`,
    `/readyz` on CHASER_AUTH_OPERATOR_ADDRESS; no admin API) unless that is empty."""
    from chaser_auth.api.operator import OperatorListener, bind, create_operator_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    settings = runtime.settings
    operator: OperatorListener | None = None
    if (address := settings.operator_host_port) is not None:
        try:
            sock = bind(*address)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            print(
                f"chaser-auth: cannot listen on {settings.operator_address} "
                f"(CHASER_AUTH_OPERATOR_ADDRESS): {reason}",
                file=sys.stderr,
            )
            return 1
        operator = OperatorListener(create_operator_app(runtime, with_admin=False), sock)
        await operator.start()
        log.info("operator listener on %s (/metrics, /healthz, /readyz)", operator.url)
    try:
        await runtime.worker().run(stop)
    finally:
        if operator is not None:
            await operator.stop()
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise ChaserError("No terminal to ask for a password on: use --password-stdin.")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Password (again): "):
        raise ChaserError("The two passwords differ.")
    return first


def _admin_key(name: str, settings: Settings) -> int:
    from chaser_auth.config import admin_key_digests
    from chaser_auth.domain.admin import key_digest, new_admin_key

    key = new_admin_key()
    pair = f"{name}:{key_digest(key)}"
    try:
        admin_key_digests(pair)
    except ValueError as exc:
        raise ChaserError(f"admin-key: {exc}") from None
    if name in settings.admin_key_digests:
        print(
            f"chaser-auth: note: CHASER_AUTH_ADMIN_KEYS already has a key named {name}; "
            "replace its pair, or pick another name to keep both for a while",
            file=sys.stderr,
        )
    print(f"key (give it to the caller; it is not kept anywhere): {key}")
    print(f"add to CHASER_AUTH_ADMIN_KEYS (comma-separated): {pair}")
    return 0


# The `users` and `outbox` commands are the admin API's actions (`domain.admin`, the same calls
# `api/admin.py` makes), with no admin key: the command line's operator holds the server.


async def _create_user(runtime: Runtime, email: str, password: str) -> int:
    await runtime.store.ping()
    user = await runtime.admin.create_account(email, password, key=None)
    print(f"created account {user.id}")
    return 0


async def _invite_user(runtime: Runtime, email: str) -> int:
    user = await runtime.admin.invite(email, key=None)
    print(f"created account {user.id}; the invitation goes out with the delivery worker")
    return 0


async def _users(runtime: Runtime, args: argparse.Namespace) -> int:
    admin = runtime.admin
    if args.users_command == "list":
        print(f"{'id':36}  {'created':20}  {'verified':8}  {'active':6}  email")
        for user in await admin.listing():
            print(
                f"{user.id!s:36}  {user.created_at:%Y-%m-%dT%H:%M:%SZ}  "
                f"{'yes' if user.email_verified else 'no':8}  "
                f"{'yes' if user.is_active else 'no':6}  {user.email}"
            )
        return 0
    if args.users_command in ("disable", "enable"):
        user = await admin.set_active(args.email, args.users_command == "enable", key=None)
        print(f"{args.users_command}d account {user.id}")
        return 0
    if args.users_command == "delete":
        user = await admin.delete(args.email, key=None)
        print(f"deleted account {user.id}")
        return 0
    if args.users_command == "sessions" and args.end:
        ended = await admin.end_sessions(args.email, key=None)
        print(f"ended {ended} session{'s' if ended != 1 else ''}")
        return 0
    if args.users_command == "sessions":
        print(f"{'id':36}  {'created':20}  {'last used':20}  expires")
        for row in await admin.sessions_of(args.email):
            print(
                f"{row.id!s:36}  {row.created_at:%Y-%m-%dT%H:%M:%SZ}  "
                f"{row.last_seen_at:%Y-%m-%dT%H:%M:%SZ}  {row.expires_at:%Y-%m-%dT%H:%M:%SZ}"
            )
        return 0
    print((await admin.recovery_link(args.email, key=None)).link)
    return 0


async def _audit(runtime: Runtime, args: argparse.Namespace) -> int:
    if args.action == "purge":
        count = await runtime.housekeeping.audit_retention()
        print(f"purged {count} event{'s' if count != 1 else ''}")
        return 0
    events = await runtime.housekeeping.audit_trail(
        within=args.since, event=args.event, user_id=args.user, limit=args.limit
    )
    print(f"{'at':20}  {'event':30}  {'user':36}  {'subject':16}  detail")
    for row in events:
        detail = json.dumps(row.detail, separators=(",", ":")) if row.detail else ""
        print(
            f"{row.at:%Y-%m-%dT%H:%M:%SZ}  {row.event:30}  {row.user_id or '-'!s:36}  "
            f"{(row.subject or '-')[:16]:16}  {detail}"
        )
    return 0


async def _doctor(settings: Settings) -> int:
    from chaser_auth.doctor import FAIL, examine

    findings = await examine(settings)
    for finding in findings:
        print(f"{finding.level:4}  {finding.topic:10}  {finding.text}")
    failed = sum(f.level == FAIL for f in findings)
    print("fix the FAIL lines above" if failed else "nothing blocks serving")
    return 1 if failed else 0


async def _outbox(runtime: Runtime, args: argparse.Namespace) -> int:
    housekeeping = runtime.housekeeping
    if args.outbox_command == "list":
        rows = await runtime.admin.outbox(args.status)
        print(
            f"{'id':36}  {'kind':24} {'status':7} {'tries':>5}  {'created':20} "
            f"{'outcome / last error'}"
        )
        for row in rows:
            print(
                f"{row.id!s:36}  {row.kind:24} {row.status:7} {row.attempts:>5}  "
                f"{row.created_at:%Y-%m-%dT%H:%M:%SZ} {row.outcome or row.last_error or ''}"
            )
        return 0
    if args.outbox_command == "retry":
        try:
            await runtime.admin.retry_dead_letter(args.id, key=None)
        except NotFound:
            print(f"chaser-auth: no dead letter {args.id}", file=sys.stderr)
            return 1
        print(f"queued {args.id} for delivery")
        return 0
    count = await housekeeping.purge_outbox()
    print(f"purged {count} message{'s' if count != 1 else ''}")
    return 0
