"""Engines for the two supported databases.

SQLite (embedded default): WAL so readers never block the writer; `synchronous=FULL` so a
request answered 200 survives power loss, not just a crash; a busy timeout; and every
transaction starts with BEGIN IMMEDIATE — a deferred transaction that later tries to write can
fail with SQLITE_BUSY without waiting, which would turn into lost work under load.
PostgreSQL: asyncpg, READ COMMITTED; single-use updates rely on row locks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 10_000
WAL_SWITCH_TRIES = 100

# aiosqlite logs every statement *with its parameters* (addresses, digests) at DEBUG; an
# operator who turns on DEBUG to chase a problem must not get personal data in the logs.
logging.getLogger("aiosqlite").setLevel(logging.INFO)


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def create_private_file(path: Path) -> None:
    """Create the SQLite file (and its folder) readable by its owner only, if it is not there.

    The file holds addresses and password hashes, and SQLite gives its `-wal` and `-shm` the
    main file's mode; left to SQLite, all three would follow the umask (0644 under the usual
    0022) beside a secret key file of mode 600. Only our own file and folder are narrowed:
    the process umask is left alone, and an existing file keeps the mode its operator chose
    (`chaser-auth doctor` reports a loose one)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    path = sqlite_path(url)
    if path is not None:
        create_private_file(path)
    # hide_parameters: SQLAlchemy's own SQL logging and its exception messages never carry
    # bound values (an IntegrityError would otherwise quote the address).
    if not url.startswith("sqlite"):
        return create_async_engine(url, pool_pre_ping=True, hide_parameters=True, **kwargs)

    engine = create_async_engine(url, hide_parameters=True, **kwargs)
    _sqlite_hooks(engine.sync_engine)
    return engine


def create_inline_engine(url: str) -> Engine | None:
    """For a SQLite file: a synchronous engine (the standard library's sqlite3) on the same
    file with the same settings, for `Store` to run its transactions on the event loop's
    thread. None for any other database."""
    if sqlite_path(url) is None:
        return None
    engine = sqlalchemy.create_engine(
        make_url(url).set(drivername="sqlite+pysqlite"), hide_parameters=True
    )
    _sqlite_hooks(engine)
    return engine


def _sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to the "begin" hook below (SQLAlchemy's documented recipe).
        dbapi_connection.isolation_level = None
        sqlite_pragmas(dbapi_connection)

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Every transaction takes the write lock at BEGIN, so two never deadlock upgrading a
        # read; a connection marked `read_only` (the readiness check) needs no lock to wait on.
        read_only = connection.get_execution_options().get("read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def sqlite_pragmas(dbapi_connection: Any) -> None:
    """The settings every connection to the file gets (ours and `SqliteIntake`'s own)."""
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    _use_wal(cursor)
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL (a setting the file keeps). Only the very first switch needs an
    exclusive lock, and SQLite answers "locked" at once rather than waiting when another
    process starting on the same new file holds it; so that one case is retried briefly."""
    cursor.execute("PRAGMA journal_mode")
    if str(cursor.fetchone()[0]).lower() == "wal":
        return
    for attempt in range(WAL_SWITCH_TRIES):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # the driver's OperationalError, by its text
            if "locked" not in str(exc) or attempt == WAL_SWITCH_TRIES - 1:
                raise
            time.sleep(0.05)
