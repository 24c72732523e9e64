"""Group commit: the request path's outbox rows, and the worker's outcomes.

Every seed request must be on disk before it is answered, and a commit costs an fsync. So the
request path does not open its own transaction: it hands its outbox row to `OutboxIntake`,
which writes every row that arrived while the previous commit was in flight in one
transaction, then answers each waiting request. Under load many requests share one fsync;
alone, a request pays one commit as before. No request is answered before its row is
committed, and a failed commit fails every request in it (they get the error, not a 200).

`GroupCommit` is that mechanism on its own; the delivery worker records its outcomes through
it too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Generic, TypeVar

from chaser_auth.store.repositories import Store, new_outbox_row

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


class OutboxIntake:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._commits: GroupCommit[dict[str, Any]] = GroupCommit(self._insert)

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        async with self.store.tx() as tx:
            await tx.outbox.add_many(rows)

    async def enqueue(self, kind: str, now: datetime, payload: dict[str, Any]) -> None:
        # shield: a client that hangs up must not cancel the commit its neighbours wait for.
        await asyncio.shield(self._commits.submit(new_outbox_row(kind, now, payload=payload)))

    async def close(self) -> None:
        await self._commits.close()
