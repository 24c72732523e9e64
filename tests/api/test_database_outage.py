"""PostgreSQL becomes unreachable and comes back: the API answers 503 in the error shape with
Retry-After (never a 500), /readyz says so, nothing answered 200 is lost, and everything
recovers without a restart.

The outage is real: the database refuses new connections and every open one is cut
(`ALTER DATABASE … ALLOW_CONNECTIONS false` + `pg_terminate_backend`), as a failover would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from chaser_auth.store.notify import asyncpg_dsn
from tests.conftest import POSTGRES, SCALED, FakeClock, Served, Smtp, make_settings, serve

BACKENDS = (SCALED,)


async def set_reachable(database_url: str, reachable: bool) -> None:
    name = make_url(database_url).database
    admin = await asyncpg.connect(asyncpg_dsn(POSTGRES))
    try:
        await admin.execute(
            f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"true" if reachable else "false"}'
        )
        if not reachable:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
    finally:
        await admin.close()


async def answers_during_outage(app: Served) -> list[Any]:
    return [
        await app.request_reset("down@example.com"),
        await app.client.post(
            "/auth/login", json={"email": "down@example.com", "password": "x" * 20}
        ),
        await app.client.get("/readyz"),
    ]


async def test_an_unreachable_database_is_a_503_and_recovers_without_restart(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    settings = make_settings(tmp_path, **backend_settings, smtp_url=smtp.url)
    async with serve(settings, clock, smtp) as app:
        await app.create_user("down@example.com")
        before = await app.request_reset("down@example.com")
        assert before.status_code == 200
        await smtp.sink.wait_for(1, to="down@example.com")

        await set_reachable(settings.database_url, False)
        try:
            for response in await answers_during_outage(app):
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"] == "5"
                assert response.json()["error"]["code"] == "service_unavailable"
        finally:
            await set_reachable(settings.database_url, True)

        assert (await app.client.get("/readyz")).status_code == 200
        assert (await app.request_reset("down@example.com")).status_code == 200
        got = await smtp.sink.wait_for(2, to="down@example.com", timeout=20)
        assert len(got) == 2  # the worker came back too, and nothing 200-answered was lost
