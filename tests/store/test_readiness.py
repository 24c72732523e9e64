"""`Store.ping`, the readiness check: a question the database must answer, and nothing more.

On SQLite every transaction takes the write lock at BEGIN (BEGIN IMMEDIATE). The check runs on
the async engine's own thread while the store's transactions run on the event loop's: had it
taken the write lock too, a transaction on the loop would sit in SQLite's busy handler (the
loop with it) waiting for a check that needs the loop to finish — each such wait up to the busy
timeout. So the check begins a deferred transaction and never waits for a writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from chaser_auth.store.engine import SQLITE_BUSY_TIMEOUT_MS, create_engine, create_inline_engine
from chaser_auth.store.migrate import upgrade
from chaser_auth.store.transactions import Store


async def test_the_readiness_check_waits_for_no_writer(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    await asyncio.to_thread(upgrade, url)
    store = Store(create_engine(url), create_inline_engine(url))
    try:
        with contextlib.closing(sqlite3.connect(tmp_path / "auth.db", isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")  # another process writing
            try:
                # Well within the busy timeout a write would wait for.
                await asyncio.wait_for(store.ping(), timeout=SQLITE_BUSY_TIMEOUT_MS / 1000 / 4)
            finally:
                db.execute("ROLLBACK")
    finally:
        await store.close()
