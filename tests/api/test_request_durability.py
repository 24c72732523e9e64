"""The reset request endpoint answers only after its request is committed, shares commits under load
(group commit), and fails loudly — never with a 200 — when the commit fails."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from tests.conftest import Served


async def sql(db: Path, statement: str) -> list[tuple[object, ...]]:
    """Run `statement` on a separate connection, which sees only what was committed. In a
    thread: the server shares this event loop, and must go on to release its locks."""

    def run() -> list[tuple[object, ...]]:
        with contextlib.closing(sqlite3.connect(db, timeout=10)) as connection, connection:
            return connection.execute(statement).fetchall()

    return await asyncio.to_thread(run)


async def committed_requests(db: Path) -> int:
    [(count,)] = await sql(db, "SELECT count(*) FROM outbox")
    return int(str(count))


async def test_every_answered_request_is_already_committed(app: Served, tmp_path: Path) -> None:
    answers = await asyncio.gather(
        *(app.request_reset(f"burst{i}@example.com") for i in range(300))
    )
    assert [a.status_code for a in answers] == [200] * 300
    assert await committed_requests(tmp_path / "auth.db") == 300
    await app.settle()
    assert await committed_requests(tmp_path / "auth.db") == 300


async def test_a_failed_commit_answers_503_to_every_request_in_it(
    app: Served, tmp_path: Path
) -> None:
    await sql(tmp_path / "auth.db", "ALTER TABLE outbox RENAME TO outbox_away")
    try:
        answers = await asyncio.gather(
            *(app.request_reset(f"lost{i}@example.com") for i in range(20))
        )
        for answer in answers:
            assert answer.status_code == 503
            assert answer.json()["error"]["code"] == "service_unavailable"
            assert answer.headers["retry-after"] == "5"
    finally:
        await sql(tmp_path / "auth.db", "ALTER TABLE outbox_away RENAME TO outbox")
    # and the service recovers without a restart
    assert (await app.request_reset("back@example.com")).status_code == 200
    assert await committed_requests(tmp_path / "auth.db") == 1
