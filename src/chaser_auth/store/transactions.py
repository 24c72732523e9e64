"""The store's transactions and how they take turns. One `Tx` is one database transaction with
a repository per table (`repositories`); the domain asks it questions and tells it what
changed, inside `async with store.tx() as tx`."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, text
from sqlalchemy.engine import ScalarResult
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Session as SyncSession
from sqlalchemy.orm import sessionmaker
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.selectable import TypedReturnsRows

from chaser_auth.store.repositories import (
    Audit,
    Db,
    LimitHits,
    LinkTokens,
    Outbox,
    Sessions,
    Users,
)
from chaser_auth.store.tables import EmailChangeToken, EmailUndoToken, ResetToken, VerifyToken

R = TypeVar("R")


class InlineSession:
    """`Db` over a synchronous `Session`: each call runs at once, on the event loop's thread.

    Used for SQLite (see `Store`): the file is local and a statement takes microseconds to a
    fraction of a millisecond, while handing each one to aiosqlite's thread and back costs a
    turn of the event loop — under load, milliseconds — with the write lock held all along."""

    def __init__(self, session: SyncSession) -> None:
        self._session = session

    async def execute(self, statement: Executable, params: Any = None) -> Any:
        return self._session.execute(statement, params)

    async def scalars(self, statement: TypedReturnsRows[R], params: Any = None) -> ScalarResult[R]:
        return self._session.scalars(statement, params)

    async def scalar(self, statement: TypedReturnsRows[R], params: Any = None) -> R | None:
        return self._session.scalar(statement, params)

    async def get(self, entity: type[R], ident: Any) -> R | None:
        return self._session.get(entity, ident)

    async def flush(self) -> None:
        self._session.flush()

    def add(self, instance: object) -> None:
        self._session.add(instance)

    def get_bind(self) -> Any:
        return self._session.get_bind()


class Tx:
    def __init__(self, db: Db) -> None:
        self.db = db
        self.users = Users(db)
        self.sessions = Sessions(db)
        self.reset_tokens = LinkTokens(db, ResetToken)
        self.verify_tokens = LinkTokens(db, VerifyToken)
        self.email_change_tokens = LinkTokens(db, EmailChangeToken)
        self.email_undo_tokens = LinkTokens(db, EmailUndoToken)
        self.outbox = Outbox(db)
        self.audit = Audit(db)
        self.limit_hits = LimitHits(db)


class Store:
    def __init__(self, engine: AsyncEngine, inline: Engine | None = None) -> None:
        """`engine` serves every transaction, unless `inline` (a synchronous engine on the same
        SQLite file, `engine.create_inline_engine`) is given: then transactions run on it,
        statement by statement on the event loop's thread, and hold SQLite's one write lock
        only as long as SQLite works — not across event-loop turns, while the request path's
        writer thread waits for that lock."""
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._inline_engine = inline
        self._inline = sessionmaker(inline, expire_on_commit=False) if inline else None
        # SQLite has one writer at a time, and a connection that finds the lock taken sleeps
        # in its busy handler with growing naps and no queue: under load some requests wait
        # seconds while others pass. Within a process, transactions therefore take turns on
        # a FIFO asyncio lock instead; the busy timeout only arbitrates between processes.
        # (With `inline` the turns also keep a transaction that awaits something else from
        # meeting another one on the same thread, which would wait on it forever.)
        self._turns = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        # The request path's writer thread (`intake.SqliteIntake`) is in this process too: it
        # takes this lock around each insert, and an inline transaction holds it from BEGIN
        # to COMMIT, so the two wait for each other here — woken the moment the other is done
        # — and never in SQLite's busy handler, whose naps (1, 2, 5, 10 ms …) held up every
        # request of a batch that met a worker transaction. Blocking the loop's thread here
        # costs it at most one batch insert: the waiting releases the GIL, so the writer
        # finishes meanwhile. (Taken only with `inline`: PostgreSQL has no such writer.)
        self.write_lock = threading.Lock()

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[Tx]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        async with self._turn():
            if self._inline is not None:
                with self.write_lock, self._inline() as session, session.begin():
                    yield Tx(InlineSession(session))
            else:
                async with self._sessions() as db, db.begin():
                    yield Tx(db)
        if self._inline is not None:
            # The transaction ran on the event loop's thread: let the loop answer what waited
            # for it before the caller's next one (the worker mints links in a run of
            # transactions). After the turn is given back, so no other transaction waits on it.
            await asyncio.sleep(0)

    def _turn(self) -> contextlib.AbstractAsyncContextManager[object]:
        return self._turns if self._turns is not None else contextlib.nullcontext()

    async def ping(self) -> None:
        """A query the database must answer; it waits for no writer (on SQLite, a deferred
        BEGIN: no write lock)."""
        async with self.engine.connect() as connection:
            await connection.execution_options(read_only=True)
            await connection.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()
        if self._inline_engine is not None:
            self._inline_engine.dispose()
