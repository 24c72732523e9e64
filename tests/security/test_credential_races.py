"""A credential change locks out everything that authenticated with the old credential — also
requests that were in flight while it was made (docs/security.md, "Security decisions").

Real concurrent clients over HTTP, from distinct loopback addresses (each stands for a host),
on SQLite and on PostgreSQL with Redis. The argon2 cost is raised from the tests' usual
minimum so that a login's verification takes long enough (tens of ms) for the change to land
inside it; each race is repeated at several offsets between its two sides.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.conftest import (
    EVERY_BACKEND,
    NEW_PASSWORD,
    PASSWORD,
    FakeClock,
    Served,
    Smtp,
    make_settings,
    serve,
)

BACKENDS = EVERY_BACKEND
# Negative: the logins (or the thief's change) start that many ms before the owner's reset;
# positive: after it.
OFFSETS_MS = (-30, -10, 0, 10)
T = TypeVar("T")
A = TypeVar("A")
B = TypeVar("B")
THIEF_PASSWORD = "the thief's own passphrase 9"


@pytest.fixture
async def app(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> AsyncIterator[Served]:
    settings = make_settings(
        tmp_path,
        smtp_url=smtp.url,
        argon2_time_cost=1,
        argon2_memory_cost=8192,
        **backend_settings,
    )
    async with serve(settings, clock, smtp) as served:
        yield served


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def later(delay_ms: float, call: Awaitable[T]) -> T:
    await asyncio.sleep(max(delay_ms, 0) / 1000)
    return await call


async def race(first: Awaitable[A], second: Awaitable[B], offset_ms: float) -> tuple[A, B]:
    """Start `first` `offset_ms` before `second` (after it, when negative)."""
    one, two = await asyncio.gather(later(-offset_ms, first), later(offset_ms, second))
    return one, two


async def status_of_session(app: Served, token: str) -> int:
    return (await app.client.get("/auth/me", headers=bearer(token))).status_code


async def login(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/auth/login", json={"email": email, "password": password})


async def operator_token(app: Served, email: str) -> str:
    link = await app.runtime.recovery.operator_link(await app.runtime.accounts.find(email))
    return link.rpartition("#token=")[2]


async def test_no_session_opened_with_the_old_password_survives_a_reset(app: Served) -> None:
    clients = [app.client_from(f"127.0.0.{i}") for i in range(2, 6)]
    owner = app.client_from("127.0.0.9")
    survivors: list[tuple[int, str]] = []
    try:
        for offset in OFFSETS_MS:
            email = f"owner{offset + 100}@example.com"
            await app.create_user(email, PASSWORD)
            token = await operator_token(app, email)
            thieves = asyncio.gather(*(login(c, email, PASSWORD) for c in clients for _ in (1, 2)))
            confirm = owner.post(
                "/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD}
            )
            logins, reset = await race(thieves, confirm, offset)
            assert reset.status_code == 200, reset.text

            opened = [r.json()["token"] for r in logins if r.status_code == 200]
            assert all(r.status_code in (200, 401) for r in logins)
            for session in opened:
                if await status_of_session(app, session) != 401:
                    survivors.append((offset, session))
            assert await status_of_session(app, reset.json()["token"]) == 200
            assert (await login(owner, email, NEW_PASSWORD)).status_code == 200
            assert (await login(owner, email, PASSWORD)).status_code == 401
    finally:
        for client in (*clients, owner):
            await client.aclose()
    assert survivors == [], f"sessions opened with the old password outlived the reset: {survivors}"


async def test_sessions_from_logins_in_flight_stay_dead_after_disable_and_enable(
    app: Served,
) -> None:
    clients = [app.client_from(f"127.0.0.{i}") for i in range(2, 6)]
    survivors: list[tuple[int, str]] = []
    try:
        for offset in OFFSETS_MS:
            email = f"disabled{offset + 100}@example.com"
            await app.create_user(email, PASSWORD)

            async def disable(email: str = email) -> httpx.Response:
                await app.runtime.accounts.set_active(email, False)
                return httpx.Response(204)

            thieves = asyncio.gather(*(login(c, email, PASSWORD) for c in clients for _ in (1, 2)))
            logins, _ = await race(thieves, disable(), offset)
            await app.runtime.accounts.set_active(email, True)

            for response in logins:
                assert response.status_code in (200, 401)
                if response.status_code == 200:
                    session = response.json()["token"]
                    if await status_of_session(app, session) != 401:
                        survivors.append((offset, session))
            assert (await login(clients[0], email, PASSWORD)).status_code == 200
    finally:
        for client in clients:
            await client.aclose()
    assert survivors == [], f"sessions from logins in flight came back: {survivors}"


async def test_a_password_change_in_flight_never_beats_the_owners_reset(app: Served) -> None:
    thief = app.client_from("127.0.0.2")
    owner = app.client_from("127.0.0.3")
    try:
        for offset in OFFSETS_MS:
            email = f"taken{offset + 100}@example.com"
            await app.create_user(email, PASSWORD)
            stolen = (await login(thief, email, PASSWORD)).json()["token"]
            token = await operator_token(app, email)

            change = thief.post(
                "/auth/password/change",
                json={"current_password": PASSWORD, "password": THIEF_PASSWORD},
                headers=bearer(stolen),
            )
            confirm = owner.post(
                "/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD}
            )
            changed, reset = await race(change, confirm, offset)

            assert reset.status_code == 200, (offset, reset.text)
            assert changed.status_code in (200, 401), (offset, changed.text)
            assert await status_of_session(app, reset.json()["token"]) == 200, offset
            assert await status_of_session(app, stolen) == 401, offset
            if changed.status_code == 200:
                assert await status_of_session(app, changed.json()["token"]) == 401, offset
            assert (await login(owner, email, NEW_PASSWORD)).status_code == 200, offset
            assert (await login(owner, email, THIEF_PASSWORD)).status_code == 401, offset
            assert (await login(owner, email, PASSWORD)).status_code == 401, offset
    finally:
        await thief.aclose()
        await owner.aclose()
