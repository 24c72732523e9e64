"""The per-address limit (3 mails an hour) against a link lifetime (30 minutes): a stranger who
spends an address's budget must not leave its owner without a working link for the rest of
the hour, and a flood must still get only a bounded number of mails."""

from __future__ import annotations

import asyncio

from tests.conftest import EVERY_BACKEND, NEW_PASSWORD, PASSWORD, Served

BACKENDS = EVERY_BACKEND  # SQLite with process memory; PostgreSQL with Redis
OWNER = "owner@example.com"


async def reset_mails(app: Served) -> list[str]:
    """The tokens of every reset mail the owner has received, oldest first."""
    assert app.smtp is not None
    return [m.link()[1] for m in app.smtp.sink.to(OWNER) if "reset-password#" in m.text()]


async def flood(app: Served, requests: int) -> None:
    """`requests` reset requests for the owner's address at once, then the worker's verdicts."""
    answers = await asyncio.gather(*(app.request_reset(OWNER) for _ in range(requests)))
    assert {answer.status_code for answer in answers} == {200}
    await app.settle()  # a row is recorded sent once the relay has taken its message


async def verify(app: Served, token: str) -> int:
    response = await app.client.post("/auth/password-reset/verify", json={"token": token})
    return response.status_code


async def test_owner_gets_a_working_link_after_a_stranger_spent_the_budget(app: Served) -> None:
    settings = app.settings
    assert settings.rate_limit_reset_per_address == "3/hour"
    assert settings.reset_token_ttl == 1800
    await app.create_user(OWNER)

    # A stranger spends the hour's budget: three mails, and more requests send nothing while
    # the newest of those links still works.
    for _ in range(3):
        await app.reset_link(OWNER)
    await flood(app, 7)
    stranger = await reset_mails(app)
    assert len(stranger) == 3

    # 31 minutes on, every one of those links is dead, and the hour's budget is still spent.
    app.clock.advance(31 * 60)
    assert [await verify(app, token) for token in stranger] == [400, 400, 400]

    # The owner asks, and gets a link that works.
    await app.reset_link(OWNER)
    [*_, owned] = await reset_mails(app)
    assert await verify(app, owned) == 200

    # While it lives, a flood gets nothing more, at once or 20 minutes later.
    await flood(app, 10)
    app.clock.advance(20 * 60)
    await flood(app, 10)
    assert len(await reset_mails(app)) == 4  # the budget of 3, and one beyond it

    confirmed = await app.client.post(
        "/auth/password-reset/confirm", json={"token": owned, "password": NEW_PASSWORD}
    )
    assert confirmed.status_code == 200, confirmed.text
    old = await app.client.post("/auth/login", json={"email": OWNER, "password": PASSWORD})
    assert old.status_code == 401
    new = await app.client.post("/auth/login", json={"email": OWNER, "password": NEW_PASSWORD})
    assert new.status_code == 200

    # The audit trail says which link went out beyond the limit, and what was suppressed.
    async with app.runtime.store.tx() as tx:
        beyond = await tx.audit.listing(event="reset_beyond_limit")
        suppressed = await tx.audit.listing(event="reset_suppressed", limit=1000)
    assert len(beyond) == 1
    assert len(suppressed) == 7 + 10 + 10


async def test_a_flood_gets_one_link_per_lifetime_beyond_the_budget(app: Served) -> None:
    """Requests every ten minutes for an hour and a half, ten at a time: the budget's three
    mails in the first hour, then one mail only when the last link has expired."""
    await app.create_user(OWNER)
    sent: list[int] = []
    for _ in range(6):  # minutes 0, 10, 20, 30, 40, 50
        await flood(app, 10)
        sent.append(len(await reset_mails(app)))
        app.clock.advance(10 * 60)
    # 0: the budget's 3 (the newest lives until 30). 30: the links died at 30 + 1 s — still
    # alive at 30 to the second; the next request after it, at 40, gets one beyond the budget.
    assert sent == [3, 3, 3, 3, 4, 4]
