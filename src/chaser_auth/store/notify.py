"""Wake-ups across processes on PostgreSQL: LISTEN/NOTIFY.

Whoever adds outbox rows sends `NOTIFY chaser_auth_outbox` in the same transaction
(`repositories.Outbox`), and PostgreSQL delivers it at commit — never for rows that were rolled
back. Each worker keeps one connection that LISTENs and sets the worker's wake event, so mail
leaves within milliseconds of the request that queued it, whichever process took the request.

Notifications are a shortcut, not the source of truth: the worker still polls every
`CHASER_AUTH_WORKER_POLL_INTERVAL`, so a notification lost (listener connection dropped, server
restarted) delays mail by at most one interval. A dropped listener reconnects after
`retry` seconds and then wakes the worker once, to catch up on anything it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy.engine import make_url

CHANNEL = "chaser_auth_outbox"
log = logging.getLogger("chaser_auth.worker")


def is_postgres(database_url: str) -> bool:
    return make_url(database_url).get_backend_name() == "postgresql"


def asyncpg_dsn(database_url: str) -> str:
    """The libpq-style DSN asyncpg takes, from the SQLAlchemy URL."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class OutboxListener:
    def __init__(self, database_url: str, wake: asyncio.Event, retry: float = 5.0) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._wake = wake
        self._retry = retry
        self.listening = asyncio.Event()  # set while a LISTEN connection is up (for tests)

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        # Imported here: a process on SQLite never needs it (and saves its memory).
        import asyncpg  # type: ignore[import-untyped]

        while not stop.is_set():
            lost = asyncio.Event()
            connection = None
            try:
                connection = await asyncpg.connect(self._dsn, timeout=10)
                connection.add_termination_listener(lambda _, lost=lost: lost.set())
                await connection.add_listener(CHANNEL, self._notified)
                self.listening.set()
                self._wake.set()  # rows may have arrived while nobody listened
                log.info("listening for new outbox rows (LISTEN %s)", CHANNEL)
                await _first(stop.wait(), lost.wait())
                if not stop.is_set():
                    log.warning("outbox notifications lost; polling until they are back")
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                log.warning("outbox notifications unavailable (%s); polling", type(exc).__name__)
            finally:
                self.listening.clear()
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.close(timeout=2)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._retry)


async def _first(*waits: Any) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
