"""`Outbox.claim`: one `UPDATE … RETURNING` where the database has it, three statements where
it does not (SQLite before 3.35); both take the same rows, oldest first, and lease them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chaser_auth.store.engine import create_engine, create_inline_engine
from chaser_auth.store.migrate import upgrade
from chaser_auth.store.repositories import Job, new_outbox_row
from chaser_auth.store.transactions import Store

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


async def claimed_twice(db: Path, *, returning: bool) -> tuple[list[Job], list[Job]]:
    url = f"sqlite+aiosqlite:///{db}"
    await asyncio.to_thread(upgrade, url)
    inline = create_inline_engine(url)
    assert inline is not None
    inline.dialect.update_returning = returning
    store = Store(create_engine(url), inline)
    try:
        async with store.tx() as tx:
            # due in reverse order of insertion; the last is not due yet
            rows = [
                new_outbox_row("reset_request", NOW - timedelta(seconds=s), payload={"n": s})
                for s in (1, 2, 3, 4, 5)
            ]
            rows.append(new_outbox_row("reset_request", NOW + timedelta(seconds=9)))
            await tx.outbox.add_many(rows)
        async with store.tx() as tx:
            first = await tx.outbox.claim(NOW, NOW + timedelta(seconds=60), 4)
        async with store.tx() as tx:
            second = await tx.outbox.claim(NOW, NOW + timedelta(seconds=60), 4)
        return first, second
    finally:
        await store.close()


@pytest.mark.parametrize("returning", [True, False], ids=["update-returning", "three-statements"])
async def test_claim_takes_the_oldest_due_rows_and_leases_them(
    tmp_path: Path, returning: bool
) -> None:
    first, second = await claimed_twice(tmp_path / "auth.db", returning=returning)
    assert [job.payload for job in first] == [{"n": 5}, {"n": 4}, {"n": 3}, {"n": 2}]
    assert [job.attempts for job in first] == [1, 1, 1, 1]
    assert [job.available_at for job in first] == [NOW - timedelta(seconds=s) for s in (5, 4, 3, 2)]
    assert all(job.kind == "reset_request" and job.user_id is None for job in first)
    # the leased four are not taken again; the one left that is due is
    assert [job.payload for job in second] == [{"n": 1}]
