"""Group commit for the request path.

Every seed request must be on disk before it is answered, and a commit costs an fsync. So the
request path does not open its own transaction: it hands its outbox row to `OutboxIntake`,
which writes every row that arrived while the previous commit was in flight in one
transaction, then answers each waiting request. Under load many requests share one fsync;
alone, a request pays one commit as before. No request is answered before its row is
committed, and a failed commit fails every request in it (they get the error, not a 200).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any

from chaser_auth.store.repositories import Store, new_outbox_row

MAX_BATCH = 512


class OutboxIntake:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def enqueue(self, kind: str, now: datetime, payload: dict[str, Any]) -> None:
        row = new_outbox_row(kind, now, payload=payload)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((row, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        # shield: a client that hangs up must not cancel the commit its neighbours wait for.
        await asyncio.shield(done)

    async def _write(self) -> None:
        while self._waiting:
            batch = self._waiting[:MAX_BATCH]
            del self._waiting[:MAX_BATCH]
            try:
                async with self.store.tx() as tx:
                    await tx.outbox.add_many([row for row, _ in batch])
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
