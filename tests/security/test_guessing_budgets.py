"""Guessing budgets (docs/configuration.md; docs/security.md, "Security decisions"): per client
across accounts for logins, per account across every client, per client for every endpoint that
takes a link's token — each a 429 that reads the same for a known and an unknown address.

Real concurrent clients over HTTP from distinct loopback addresses, on SQLite with process
memory and on PostgreSQL with Redis."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    EVERY_BACKEND,
    NEW_PASSWORD,
    PASSWORD,
    FakeClock,
    Served,
    Smtp,
    default_budgets,
    make_settings,
    serve,
)

BACKENDS = EVERY_BACKEND
VARYING = {"date", "x-request-id"}


@pytest.fixture
async def app(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> AsyncIterator[Served]:
    settings = make_settings(tmp_path, smtp_url=smtp.url, **default_budgets(), **backend_settings)
    async with serve(settings, clock, smtp) as served:
        yield served


async def login(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/auth/login", json={"email": email, "password": password})


def statuses(responses: list[httpx.Response]) -> Counter[int]:
    return Counter(r.status_code for r in responses)


def refusal(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    """A 429 as a client sees it, but for the headers that vary anyway and the clock."""
    headers = sorted(
        (k, v)
        for k, v in response.headers.items()
        if k not in VARYING and k not in ("retry-after", "x-ratelimit-reset")
    )
    return response.status_code, response.content, headers


async def test_one_client_trying_address_after_address_is_throttled(app: Served) -> None:
    budget = app.settings.limit("rate_limit_login_per_ip").amount
    async with app.client_from("127.0.0.2") as sprayer, app.client_from("127.0.0.3") as other:
        sprayed = await asyncio.gather(
            *(login(sprayer, f"user{i}@example.com", PASSWORD) for i in range(budget + 5))
        )
        assert statuses(sprayed) == {401: budget, 429: 5}
        limited = next(r for r in sprayed if r.status_code == 429)
        assert limited.headers["x-ratelimit-scope"] == "login-ip"
        assert limited.json()["error"]["code"] == "rate_limited"
        await app.create_user("real@example.com")
        assert (await login(other, "real@example.com", PASSWORD)).status_code == 200


async def test_guesses_at_one_account_from_many_clients_are_capped(app: Served) -> None:
    cap = app.settings.limit("rate_limit_login_per_account").amount
    await app.create_user("target@example.com")
    clients = [app.client_from(f"127.0.0.{i}") for i in range(2, 32)]  # 30 hosts
    try:
        # Five wrong guesses from each of 30 hosts at once, at a known and at an unknown
        # address: the same count of 401s and 429s, and the same 429.
        answers = {}
        for email in ("target@example.com", "nobody@example.com"):

            async def guesses(client: httpx.AsyncClient, email: str = email) -> list[Any]:
                return [await login(client, email, f"wrong guess {n}") for n in range(5)]

            per_client = await asyncio.gather(*(guesses(c) for c in clients))
            answers[email] = [answer for answered in per_client for answer in answered]
            assert statuses(answers[email]) == {401: cap, 429: 5 * len(clients) - cap}
        known, unknown = (
            next(r for r in answers[email] if r.status_code == 429) for email in answers
        )
        assert known.headers["x-ratelimit-scope"] == "login-account"
        assert refusal(known) == refusal(unknown)

        # The right password from a fresh host is refused too, until the owner resets.
        async with app.client_from("127.0.0.40") as owner:
            assert (await login(owner, "target@example.com", PASSWORD)).status_code == 429
            _, token = await app.reset_link("target@example.com")
            confirmed = await owner.post(
                "/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD}
            )
            assert confirmed.status_code == 200
            assert (await login(owner, "target@example.com", NEW_PASSWORD)).status_code == 200
        # An address typed differently counts as the same account.
        assert (await login(clients[0], " TARGET@Example.COM ", "wrong")).status_code == 401
    finally:
        for client in clients:
            await client.aclose()


async def test_a_successful_login_starts_the_accounts_count_afresh(app: Served) -> None:
    cap = app.settings.limit("rate_limit_login_per_account").amount
    assert cap == 100
    await app.create_user("owner@example.com")
    clients = [app.client_from(f"127.0.0.{i}") for i in range(2, 22)]  # 20 hosts
    try:
        guesses = [login(c, "owner@example.com", f"wrong {n}") for c in clients for n in range(4)]
        assert len(guesses) == 80 < cap
        assert statuses(await asyncio.gather(*guesses)) == {401: 80}
        assert (await login(clients[0], "owner@example.com", PASSWORD)).status_code == 200
        # Consecutive failures are what counts (NIST SP 800-63B): the owner's login reset them,
        # so 40 more all get their 401 where 80 + 40 would pass the cap.
        more = [login(c, "owner@example.com", f"again {n}") for c in clients for n in range(2)]
        assert statuses(await asyncio.gather(*more)) == {401: 40}
    finally:
        for client in clients:
            await client.aclose()


async def test_made_up_tokens_are_throttled_per_client_and_audited_with_it(app: Served) -> None:
    budget = app.settings.limit("rate_limit_token_per_ip").amount
    paths = ("/auth/password-reset/confirm", "/auth/password-reset/verify", "/auth/verify-email")
    async with app.client_from("127.0.0.2") as guesser, app.client_from("127.0.0.3") as other:
        tries = [
            guesser.post(
                paths[n % 3], json={"token": f"{n:043d}", "password": "a fine long passphrase"}
            )
            for n in range(budget + 6)
        ]
        answers = await asyncio.gather(*tries)
        assert statuses(answers) == {400: budget, 429: 6}
        assert {r.headers["x-ratelimit-scope"] for r in answers if r.status_code == 429} == {
            "token-ip"
        }
        # another host is not held up by this one
        verify = await other.post("/auth/password-reset/verify", json={"token": "A" * 43})
        assert verify.status_code == 400

    confirms = [r for n, r in enumerate(answers) if n % 3 == 0 and r.status_code == 400]
    async with app.runtime.store.tx() as tx:
        failed = await tx.audit.listing(event="reset_confirm_failed", limit=1000)
    assert len(failed) == len(confirms) > 0  # a refused try writes nothing
    assert {row.client for row in failed} == {"127.0.0.2"}


async def test_audit_events_of_requests_say_which_client_sent_them(app: Served) -> None:
    # An operator looking at a flood sees who sent it: the reset requests' and the sign-ups'
    # audit events carry the client address as the per-client limits count it.
    await app.create_user("known@example.com")
    async with app.client_from("127.0.0.7") as flooder, app.client_from("127.0.0.8") as other:
        for n in range(5):
            await flooder.post("/auth/password-reset/request", json={"email": f"x{n}@example.com"})
        await flooder.post("/auth/password-reset/request", json={"email": "known@example.com"})
        await other.post(
            "/auth/register", json={"email": "new@example.com", "password": NEW_PASSWORD}
        )
    await app.settle()
    async with app.runtime.store.tx() as tx:
        requested = await tx.audit.listing(event="reset_requested", limit=1000)
        registered = await tx.audit.listing(event="account_registered", limit=1000)
    assert len(requested) == 6
    assert {row.client for row in requested} == {"127.0.0.7"}
    assert [row.client for row in registered] == ["127.0.0.8"]
