"""`SqliteIntake`, the request path's writer on the SQLite file, stores a row exactly as the
`Store` (SQLAlchemy) stores it, so the worker and every reader see no difference."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from chaser_auth.store.engine import create_engine
from chaser_auth.store.intake import SqliteIntake
from chaser_auth.store.migrate import upgrade
from chaser_auth.store.repositories import QUEUED, new_outbox_row
from chaser_auth.store.transactions import Store

COLUMNS = "kind, status, payload, user_id, attempts, created_at, available_at, locked_until"


def raw_rows(db: Path) -> list[tuple[object, ...]]:
    query = f"SELECT id, typeof(id), {COLUMNS}, typeof(created_at) FROM outbox ORDER BY rowid"  # noqa: S608
    with contextlib.closing(sqlite3.connect(db)) as connection:
        return connection.execute(query).fetchall()


async def test_a_row_is_stored_as_the_store_stores_it(tmp_path: Path) -> None:
    db = tmp_path / "auth.db"
    url = f"sqlite+aiosqlite:///{db}"
    await asyncio.to_thread(upgrade, url)
    now = datetime(2026, 11, 27, 13, 5, 7, 250, tzinfo=UTC)
    payload = {"email": "Ünïcode.Person@Example.com"}
    store = Store(create_engine(url))
    try:
        async with store.tx() as tx:
            await tx.outbox.add_many([new_outbox_row("reset_request", now, payload=payload)])
        intake = SqliteIntake(db)
        await intake.enqueue("reset_request", now, payload)
        await intake.close()

        by_store, by_intake = raw_rows(db)
        assert by_intake[1:] == by_store[1:]  # every column but the id's value, byte for byte
        row_id = str(by_intake[0])
        assert len(row_id) == 32 and int(row_id, 16) >= 0  # `uuid4().hex`: a v4 UUID's hex
        assert row_id[12] == "4" and row_id[16] in "89ab"
        async with store.tx() as tx:
            read = await tx.outbox.listing(QUEUED)
        assert [(m.kind, m.payload, m.created_at) for m in read] == [
            ("reset_request", payload, now)
        ] * 2
    finally:
        await store.close()


async def test_rows_queued_before_close_are_written(tmp_path: Path) -> None:
    db = tmp_path / "auth.db"
    await asyncio.to_thread(upgrade, f"sqlite+aiosqlite:///{db}")
    intake = SqliteIntake(db)
    now = datetime.now(UTC)
    waiting = [
        asyncio.create_task(intake.enqueue("reset_request", now, {"email": f"p{i}@example.com"}))
        for i in range(600)
    ]
    await asyncio.sleep(0)  # every request has queued its row
    await intake.close()
    await asyncio.gather(*waiting)
    assert len(raw_rows(db)) == 600


async def test_a_cancelled_wait_stops_neither_its_row_nor_its_neighbours(tmp_path: Path) -> None:
    """A client that hangs up cancels its own wait; the group write goes on, its row too."""
    db = tmp_path / "auth.db"
    await asyncio.to_thread(upgrade, f"sqlite+aiosqlite:///{db}")
    intake = SqliteIntake(db)
    now = datetime.now(UTC)
    # Another connection holds the write lock, so the intake's write cannot finish before the
    # cancellation below.
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        waits = [
            asyncio.create_task(intake.enqueue("reset_request", now, {"email": f"c{i}@ex.com"}))
            for i in range(50)
        ]
        await asyncio.sleep(0.05)  # every row queued, the writer waiting for the lock
        waits[10].cancel()
    finally:
        holder.execute("COMMIT")
        holder.close()
    results = await asyncio.gather(*waits, return_exceptions=True)
    assert isinstance(results[10], asyncio.CancelledError)
    assert [r for i, r in enumerate(results) if i != 10] == [None] * 49
    await intake.close()
    assert len(raw_rows(db)) == 50
