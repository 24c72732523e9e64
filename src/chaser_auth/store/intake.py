"""Group commit: the request path's outbox rows, and the worker's outcomes.

Every reset request must be on disk before it is answered, and a commit costs an fsync. So the
request path does not open its own transaction: it hands its outbox row to `OutboxIntake`,
which writes every row that arrived while the previous commit was in flight in one
transaction, then answers each waiting request. Under load many requests share one fsync;
alone, a request pays one commit as before. No request is answered before its row is
committed, and a failed commit fails every request in it (they get the error, not a 200).

`GroupCommit` is that mechanism on its own; the delivery worker records its outcomes through
it too. On the SQLite file the request path's rows take `SqliteIntake` instead: the same
group commit, written by a thread of its own on a connection of its own, so that the insert and
the fsync (the sqlite3 module lets go of the GIL in both) run beside the event loop instead of
on it, and a batch costs the loop one callback rather than SQLAlchemy's work per row.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError

from chaser_auth.store.engine import sqlite_pragmas
from chaser_auth.store.repositories import new_outbox_row
from chaser_auth.store.tables import OutboxMessage
from chaser_auth.store.transactions import Store

MAX_BATCH = 512
T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Items handed over while a write is in flight are written together by the next one.
    `submit` returns a future that resolves once the item's write succeeded, or carries that
    write's exception."""

    def __init__(self, write: Callable[[list[T]], Awaitable[None]]) -> None:
        self._write_batch = write
        self._waiting: list[tuple[T, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    def submit(self, item: T) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        return done

    async def _write(self) -> None:
        while self._waiting:
            batch = self._waiting[:MAX_BATCH]
            del self._waiting[:MAX_BATCH]
            try:
                await self._write_batch([item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every waiter, who raises it
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer


class Intake(Protocol):
    """Where the request path's outbox rows go: `enqueue` returns once the row is committed."""

    async def enqueue(self, kind: str, now: datetime, payload: dict[str, Any]) -> None: ...

    async def close(self) -> None: ...


class OutboxIntake:
    """The request path's group commit through the `Store` (any engine; PostgreSQL's)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._commits: GroupCommit[dict[str, Any]] = GroupCommit(self._insert)

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        async with self.store.tx() as tx:
            await tx.outbox.add_many(rows)

    async def enqueue(self, kind: str, now: datetime, payload: dict[str, Any]) -> None:
        # A client that hangs up cancels only its own future: the write goes on for everyone
        # in it (the writer skips futures already done), its row included.
        await self._commits.submit(new_outbox_row(kind, now, payload=payload))

    async def close(self) -> None:
        await self._commits.close()


_COLUMNS = ("id", "kind", "status", "payload", "attempts", "created_at", "available_at")
_INSERT = f"INSERT INTO outbox ({', '.join(_COLUMNS)}) VALUES "  # noqa: S608 - constant names
_ROW = "(" + ", ".join("?" * len(_COLUMNS)) + ")"
Waiting = tuple[tuple[Any, ...], asyncio.Future[None]]


class SqliteIntake:
    """`OutboxIntake` for the SQLite file, written by a thread of its own.

    Requests queue their row and wait on a future; the thread takes everything queued, writes
    it with one multi-row INSERT, its own transaction (the engine's pragmas: WAL,
    `synchronous=FULL`, the busy timeout; within the process it takes turns with the
    `Store`'s transactions on `write_lock`), and settles that batch's futures with one callback
    on the event loop: success once committed, or the error (as SQLAlchemy's `DBAPIError`,
    like every other database fault, so the API answers it the same way). Values are
    converted by the outbox columns' own SQLAlchemy types, so these rows are stored exactly as
    the `Store` stores them."""

    def __init__(self, path: Path, write_lock: threading.Lock | None = None) -> None:
        self.path = path
        self._write_lock = write_lock or threading.Lock()  # `Store.write_lock`
        dialect = sqlite.dialect()
        columns = OutboxMessage.__table__.c
        # Each column's own conversion (None where the driver takes the value as it is).
        self._convert = [columns[name].type.bind_processor(dialect) for name in _COLUMNS]
        self._queue: list[Waiting] = []
        self._ready = threading.Condition()
        self._closing = False
        self._batch_rows = 999 // len(_COLUMNS)  # until the connection tells its limit
        self._thread: threading.Thread | None = None  # started by the first row

    async def enqueue(self, kind: str, now: datetime, payload: dict[str, Any]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._ready:
            if self._closing:
                raise RuntimeError("the intake is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="intake", daemon=True)
                self._thread.start()
            self._queue.append(((kind, now, payload), done))
            self._ready.notify()
        # As in `OutboxIntake`: a cancelled wait leaves the write, and its row, to go on.
        await done

    async def close(self) -> None:
        """Write what is queued, then stop the thread."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        connection: sqlite3.Connection | None = None
        while True:
            with self._ready:
                while not self._queue and not self._closing:
                    self._ready.wait()
                if not self._queue:
                    break
                batch = self._queue[: self._batch_rows]
                del self._queue[: self._batch_rows]
            failure: Exception | None = None
            try:
                if connection is None:
                    connection = self._connect()
                self._write(connection, batch)
            except Exception as exc:  # noqa: BLE001 - handed to every waiter, who raises it
                failure = exc
                if connection is not None:
                    connection.close()
                    connection = None  # a fresh connection for the next batch
            _settle(batch, failure)
        if connection is not None:
            connection.close()

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        sqlite_pragmas(connection)
        # A batch is one statement: as many rows as its bound values allow (999 values before
        # SQLite 3.32, 32,766 since).
        variables = connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._batch_rows = max(1, min(MAX_BATCH, variables // len(_COLUMNS)))
        return connection

    def _write(self, connection: sqlite3.Connection, batch: list[Waiting]) -> None:
        values: list[Any] = []
        for (kind, now, payload), _ in batch:
            row = new_outbox_row(kind, now, payload=payload)
            values += [
                convert(row[name]) if convert else row[name]
                for name, convert in zip(_COLUMNS, self._convert, strict=True)
            ]
        # One statement, in autocommit: the sqlite3 module lets go of the GIL around each call
        # into SQLite and must win it back from the busy event loop after, so a batch makes one
        # such call, not BEGIN + a step per row + COMMIT. (A lone INSERT takes the write lock
        # itself and waits for it under the busy timeout, as BEGIN IMMEDIATE would.)
        statement = _INSERT + ", ".join([_ROW] * len(batch))
        try:
            with self._write_lock:
                connection.execute(statement, values)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(
                _INSERT + _ROW, None, exc, sqlite3.Error, hide_parameters=True
            ) from exc


def _settle(batch: list[Waiting], failure: Exception | None) -> None:
    """Resolve the batch's futures from the writer thread: one callback per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for _, done in batch:
        by_loop.setdefault(done.get_loop(), []).append(done)
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_resolve, futures, failure)


def _resolve(futures: list[asyncio.Future[None]], failure: Exception | None) -> None:
    for done in futures:
        if done.done():
            continue
        if failure is None:
            done.set_result(None)
        else:
            done.set_exception(failure)
