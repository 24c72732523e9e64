"""Workers in other processes wake on PostgreSQL's LISTEN/NOTIFY, and fall back to polling when
notifications are lost (docs/deployment.md).

The API runs without a worker; the worker runs on its own runtime (its own engine, limiter and
wake event — what a separate `chaser-auth worker` process has). Its poll interval is an hour,
so mail that arrives at all was woken by a notification; with notifications cut off and a short
interval, mail still arrives by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from chaser_auth.mail.worker import Worker
from chaser_auth.runtime import Runtime
from chaser_auth.store.notify import CHANNEL, asyncpg_dsn
from tests.conftest import SCALED, FakeClock, Smtp, make_settings, serve

BACKENDS = (SCALED,)  # LISTEN/NOTIFY is PostgreSQL's


@contextlib.asynccontextmanager
async def separate_worker(settings: Any) -> AsyncIterator[Worker]:
    runtime = Runtime.build(settings)
    worker = runtime.worker()
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        assert worker.listener is not None
        await asyncio.wait_for(worker.listener.listening.wait(), timeout=10)
        yield worker
    finally:
        stop.set()
        await task
        await runtime.close()


async def terminate_listeners(database_url: str) -> int:
    """Cut every LISTEN connection to this database, as a server restart or network drop would."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await connection.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE $1",
            f"%LISTEN%{CHANNEL}%",
        )
    finally:
        await connection.close()
    return len(rows)


async def test_a_worker_elsewhere_is_woken_by_the_request(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    common = {**backend_settings, "smtp_url": smtp.url}
    api_settings = make_settings(tmp_path, **common, embedded_worker=False)
    worker_settings = make_settings(tmp_path, **common, worker_poll_interval=3600)
    async with serve(api_settings, clock, None) as api, separate_worker(worker_settings):
        await api.create_user("wake@example.com")
        await api.request_reset("wake@example.com")
        got = await smtp.sink.wait_for(1, to="wake@example.com", timeout=10)
        assert len(got) == 1  # no poll was due within the hour: a notification woke it


async def test_lost_notifications_fall_back_to_polling_then_come_back(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    common = {**backend_settings, "smtp_url": smtp.url}
    api_settings = make_settings(tmp_path, **common, embedded_worker=False)
    worker_settings = make_settings(tmp_path, **common, worker_poll_interval=0.5)
    async with serve(api_settings, clock, None) as api, separate_worker(worker_settings) as worker:
        assert worker.listener is not None
        await api.create_user("poll@example.com")

        assert await terminate_listeners(api.settings.database_url) == 1
        while worker.listener.listening.is_set():
            await asyncio.sleep(0.05)
        await api.request_reset("poll@example.com")
        got = await smtp.sink.wait_for(1, to="poll@example.com", timeout=10)
        assert len(got) == 1  # delivered by polling while nobody listened

        # The listener reconnects on its own.
        await asyncio.wait_for(worker.listener.listening.wait(), timeout=15)
        await api.request_reset("poll@example.com")
        got = await smtp.sink.wait_for(2, to="poll@example.com", timeout=10)
        assert len(got) == 2
