"""`POST /auth/verify-email/resend` (docs/api.md): one answer for every address, a new link
through the outbox only for an account waiting for verification, limited per client and per
address. Real socket, real SMTP server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import EVERY_BACKEND, PASSWORD, FakeClock, Served, Smtp, make_settings, serve

BACKENDS = EVERY_BACKEND
RESEND = "/auth/verify-email/resend"
WAITING = "waiting@example.com"
VERIFIED = "verified@example.com"


def verify_token(text: str) -> str:
    return text.split("verify-email#token=")[1].split()[0]


def same_answer(a: httpx.Response, b: httpx.Response) -> None:
    assert (a.status_code, a.content) == (b.status_code, b.content)
    vary = {"date", "x-request-id"}
    assert {k: v for k, v in a.headers.items() if k not in vary} == {
        k: v for k, v in b.headers.items() if k not in vary
    }


async def register_waiting(app: Served) -> str:
    """Sign WAITING up; the token of its first verification link."""
    assert app.smtp is not None
    response = await app.client.post(
        "/auth/register", json={"email": WAITING, "password": PASSWORD}
    )
    assert response.status_code == 202
    [mail] = await app.smtp.sink.wait_for(1, to=WAITING)
    return verify_token(mail.text())


async def test_a_waiting_account_gets_a_new_link_and_the_old_one_dies(app: Served) -> None:
    assert app.smtp is not None
    first = await register_waiting(app)
    response = await app.client.post(RESEND, json={"email": "  Waiting@Example.com "})
    assert response.status_code == 202
    assert "waiting for verification" in response.json()["message"]
    mails = await app.smtp.sink.wait_for(2, to=WAITING)
    assert len(mails) == 2
    second = verify_token(mails[1].text())
    assert second != first
    dead = await app.client.post("/auth/verify-email", json={"token": first})
    assert dead.status_code == 400
    used = await app.client.post("/auth/verify-email", json={"token": second})
    assert used.status_code == 200
    assert used.json()["email"] == WAITING


async def test_every_address_gets_the_same_answer_and_only_the_waiting_one_mail(
    app: Served,
) -> None:
    assert app.smtp is not None
    await register_waiting(app)
    await app.create_user(VERIFIED)
    answers = [
        await app.client.post(RESEND, json={"email": address})
        for address in (WAITING, VERIFIED, "nobody@example.com", "not an address")
    ]
    for other in answers[1:]:
        same_answer(answers[0], other)
    await app.settle()
    assert len(app.smtp.sink.to(WAITING)) == 2
    assert app.smtp.sink.to(VERIFIED) == []
    assert app.smtp.sink.to("nobody@example.com") == []
    async with app.runtime.store.tx() as tx:
        rows = [r for r in await tx.outbox.listing() if r.kind == "verify_resend"]
    assert len(rows) == 4  # one durable row for each request, whatever the address


async def test_a_disabled_account_gets_nothing(app: Served) -> None:
    assert app.smtp is not None
    await register_waiting(app)
    await app.runtime.accounts.set_active(WAITING, False)
    response = await app.client.post(RESEND, json={"email": WAITING})
    assert response.status_code == 202
    await app.settle()
    assert len(app.smtp.sink.to(WAITING)) == 1


@pytest.fixture
async def limited(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, str]
) -> AsyncIterator[Served]:
    settings = make_settings(
        tmp_path,
        smtp_url=smtp.url,
        rate_limit_resend_per_ip="6/hour",
        rate_limit_resend_per_address="2/hour",
        **backend_settings,
    )
    async with serve(settings, clock, smtp) as served:
        yield served


async def test_limited_per_address_alike_for_known_and_unknown(limited: Served) -> None:
    await register_waiting(limited)
    for _ in range(2):
        assert (await limited.client.post(RESEND, json={"email": WAITING})).status_code == 202
        assert (
            await limited.client.post(RESEND, json={"email": "x@example.com"})
        ).status_code == 202
    known = await limited.client.post(RESEND, json={"email": WAITING})
    unknown = await limited.client.post(RESEND, json={"email": "x@example.com"})
    assert known.status_code == unknown.status_code == 429
    assert known.headers["x-ratelimit-scope"] == unknown.headers["x-ratelimit-scope"]
    assert known.headers["x-ratelimit-scope"] == "resend-address"
    assert known.json() == unknown.json()


async def test_limited_per_client(limited: Served) -> None:
    for i in range(6):
        response = await limited.client.post(RESEND, json={"email": f"a{i}@example.com"})
        assert response.status_code == 202
    refused = await limited.client.post(RESEND, json={"email": "a9@example.com"})
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-scope"] == "resend-ip"
    other = limited.client_from("127.0.0.2")
    async with other:
        assert (await other.post(RESEND, json={"email": "a9@example.com"})).status_code == 202
