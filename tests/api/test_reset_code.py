"""The one-time code beside the link: `POST /auth/password-reset/code` and
`POST /auth/verify-email/code` (docs/api.md; docs/security.md, "One-time codes").

Over HTTP, with the mail received by a real SMTP server, on SQLite and on PostgreSQL with
Redis: a reset and a verification by code; every refusal answering alike; the per-code and
per-address caps holding across two API processes on one database.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from chaser_auth.domain.tokens import CODE_DIGITS
from tests.conftest import (
    EVERY_BACKEND,
    NEW_PASSWORD,
    PASSWORD,
    FakeClock,
    Received,
    Served,
    Smtp,
    make_settings,
    serve,
)

BACKENDS = EVERY_BACKEND  # SQLite with process memory; PostgreSQL with Redis

RESET_CODE = "/auth/password-reset/code"
VERIFY_CODE = "/auth/verify-email/code"
VARYING = {"date", "x-request-id"}
CODE = re.compile(r"enter this code with your email address:\s+(\d{4} \d{4})\s")


def code_in(received: Received) -> str:
    """The code in the text part, checked to be in the HTML part too."""
    found = CODE.search(received.text())
    assert found, "no code in the message"
    assert found.group(1) in received.html()
    return found.group(1)


async def reset_mail(app: Served, email: str) -> tuple[str, str]:
    """Ask for a reset of `email`; (token of the link, code) from the mail that arrives."""
    assert app.smtp is not None
    before = len(app.smtp.sink.to(email))
    assert (await app.request_reset(email)).status_code == 200
    got = await app.smtp.sink.wait_for(before + 1, to=email)
    assert len(got) == before + 1, "the reset email did not arrive"
    return got[-1].link()[1], code_in(got[-1])


def comparable(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = sorted((k, v) for k, v in response.headers.items() if k not in VARYING)
    return response.status_code, response.content, headers


async def exchange(
    app: Served, email: str, code: str, client: httpx.AsyncClient | None = None
) -> httpx.Response:
    response = await (client or app.client).post(RESET_CODE, json={"email": email, "code": code})
    assert response.headers["cache-control"] == "no-store"
    return response


def assert_invalid_code(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_code"


def wrong(code: str) -> str:
    """Another code of the same shape."""
    digits = code.replace(" ", "")
    return f"{(int(digits) + 1) % 10**CODE_DIGITS:0{CODE_DIGITS}d}"


async def login(app: Served, email: str, password: str) -> int:
    response = await app.client.post("/auth/login", json={"email": email, "password": password})
    return response.status_code


# -- resets by code --------------------------------------------------------------------------------


async def test_a_reset_by_code_from_the_mail_end_to_end(app: Served) -> None:
    await app.create_user("coda@example.com")
    link_token, code = await reset_mail(app, "coda@example.com")
    assert len(code.replace(" ", "")) == CODE_DIGITS

    response = await exchange(app, " Coda@Example.COM ", code)

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"token", "expires_at"}
    assert body["token"] == link_token  # the code stands for the link's very token
    verify = await app.client.post("/auth/password-reset/verify", json={"token": body["token"]})
    assert verify.json()["expires_at"] == body["expires_at"]
    confirm = await app.client.post(
        "/auth/password-reset/confirm", json={"token": body["token"], "password": NEW_PASSWORD}
    )
    assert confirm.status_code == 200
    assert confirm.json()["email"] == "coda@example.com"
    assert await login(app, "coda@example.com", NEW_PASSWORD) == 200
    assert await login(app, "coda@example.com", PASSWORD) == 401
    assert_invalid_code(await exchange(app, "coda@example.com", code))  # single use


FULL_WIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + d) for d in range(10)))


@pytest.mark.parametrize("typed", ["{a}{b}", " {a} {b} ", "{a}-{b}", "full-width"])
async def test_a_code_may_be_typed_with_spaces_hyphens_or_full_width_digits(
    app: Served, typed: str
) -> None:
    await app.create_user("typed@example.com")
    _, code = await reset_mail(app, "typed@example.com")
    a, b = code.split(" ")
    text = (a + b).translate(FULL_WIDTH) if typed == "full-width" else typed.format(a=a, b=b)
    response = await exchange(app, "typed@example.com", text)
    assert response.status_code == 200, response.text


async def test_the_code_is_used_up_but_the_link_is_not(app: Served) -> None:
    await app.create_user("half@example.com")
    link_token, code = await reset_mail(app, "half@example.com")
    assert (await exchange(app, "half@example.com", code)).status_code == 200
    assert_invalid_code(await exchange(app, "half@example.com", code))
    confirm = await app.client.post(
        "/auth/password-reset/confirm", json={"token": link_token, "password": NEW_PASSWORD}
    )
    assert confirm.status_code == 200


async def test_every_refusal_answers_alike(app: Served) -> None:
    """Wrong code, unknown address, a code of another address, used, link used, superseded,
    out of tries, malformed, expired: one status, one body, the same headers."""
    for name in ("a", "b", "c", "d", "e", "f"):
        await app.create_user(f"{name}@example.com")
    _, code_a = await reset_mail(app, "a@example.com")
    _, code_b = await reset_mail(app, "b@example.com")
    link_c, code_c = await reset_mail(app, "c@example.com")
    _, old_d = await reset_mail(app, "d@example.com")
    _, new_d = await reset_mail(app, "d@example.com")
    _, code_e = await reset_mail(app, "e@example.com")
    _, code_f = await reset_mail(app, "f@example.com")

    refusals = [
        await exchange(app, "a@example.com", wrong(code_a)),
        await exchange(app, "nobody@example.com", code_a),
        await exchange(app, "not an address", code_a),
        await exchange(app, "a@example.com", code_b),  # another address's code
    ]
    assert (await exchange(app, "b@example.com", code_b)).status_code == 200
    refusals.append(await exchange(app, "b@example.com", code_b))  # used
    await app.client.post(
        "/auth/password-reset/confirm", json={"token": link_c, "password": NEW_PASSWORD}
    )
    refusals.append(await exchange(app, "c@example.com", code_c))  # its link was used
    if old_d != new_d:
        refusals.append(await exchange(app, "d@example.com", old_d))  # superseded
    for _ in range(app.settings.code_tries):
        refusals.append(await exchange(app, "e@example.com", wrong(code_e)))
    refusals.append(await exchange(app, "e@example.com", code_e))  # out of tries
    refusals.append(await exchange(app, "a@example.com", "12345"))  # malformed
    app.clock.advance(app.settings.reset_token_ttl + 1)
    refusals.append(await exchange(app, "f@example.com", code_f))  # expired

    first = comparable(refusals[0])
    assert first[0] == 400
    assert b'"invalid_code"' in first[1]
    for response in refusals:
        assert comparable(response) == first


async def test_a_code_dies_after_its_tries_and_the_link_still_works(app: Served) -> None:
    await app.create_user("tries@example.com")
    link_token, code = await reset_mail(app, "tries@example.com")
    for _ in range(app.settings.code_tries):
        assert_invalid_code(await exchange(app, "tries@example.com", wrong(code)))
    assert_invalid_code(await exchange(app, "tries@example.com", code))
    verify = await app.client.post("/auth/password-reset/verify", json={"token": link_token})
    assert verify.status_code == 200  # guessing at the code cannot cancel the owner's link
    # A new request brings a new code with tries of its own.
    _, fresh = await reset_mail(app, "tries@example.com")
    assert (await exchange(app, "tries@example.com", fresh)).status_code == 200


async def test_the_right_code_within_its_tries_still_works(app: Served) -> None:
    await app.create_user("typo@example.com")
    _, code = await reset_mail(app, "typo@example.com")
    for _ in range(app.settings.code_tries - 1):
        assert_invalid_code(await exchange(app, "typo@example.com", wrong(code)))
    assert (await exchange(app, "typo@example.com", code)).status_code == 200


async def test_no_code_is_kept_at_rest_or_logged(
    app: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await app.create_user("rest@example.com")
    _, code = await reset_mail(app, "rest@example.com")
    assert (await exchange(app, "rest@example.com", wrong(code))).status_code == 400
    assert (await exchange(app, "rest@example.com", code)).status_code == 200
    digits = code.replace(" ", "")
    dump = await app.dump()
    assert digits not in dump and code not in dump
    # The server's records: not the test's SMTP sink (aiosmtpd logs what it receives at DEBUG)
    # or its HTTP client.
    theirs = ("mail.log", "httpx", "httpcore")
    logged = "\n".join(
        record.getMessage() for record in caplog.records if not record.name.startswith(theirs)
    )
    assert logged, "nothing was logged"
    assert digits not in logged and code not in logged


async def test_a_disabled_account_has_no_working_code(app: Served) -> None:
    await app.create_user("off@example.com")
    _, code = await reset_mail(app, "off@example.com")
    await app.runtime.accounts.set_active("off@example.com", False)
    assert_invalid_code(await exchange(app, "off@example.com", code))


# -- verification by code --------------------------------------------------------------------------


async def test_a_verification_by_code_opens_a_session_as_the_link_does(app: Served) -> None:
    assert app.smtp is not None
    response = await app.client.post(
        "/auth/register", json={"email": "veri@example.com", "password": PASSWORD}
    )
    assert response.status_code == 202
    [received] = await app.smtp.sink.wait_for(1, to="veri@example.com")
    code = code_in(received)
    assert await login(app, "veri@example.com", PASSWORD) == 401  # not verified yet

    wrong_try = await app.client.post(
        VERIFY_CODE, json={"email": "veri@example.com", "code": wrong(code)}
    )
    unknown = await app.client.post(VERIFY_CODE, json={"email": "nobody@example.com", "code": code})
    assert comparable(wrong_try) == comparable(unknown)
    assert_invalid_code(wrong_try)

    verified = await app.client.post(VERIFY_CODE, json={"email": "veri@example.com", "code": code})

    assert verified.status_code == 200, verified.text
    body = verified.json()
    assert set(body) == {"email", "token", "user_id"}
    me = await app.client.get("/auth/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.json()["email_verified"] is True
    assert await login(app, "veri@example.com", PASSWORD) == 200
    again = await app.client.post(VERIFY_CODE, json={"email": "veri@example.com", "code": code})
    assert comparable(again) == comparable(unknown)
    link = re.search(r"/verify-email#token=([A-Za-z0-9_-]{43,})", received.text())
    assert link
    used = await app.client.post("/auth/verify-email", json={"token": link.group(1)})
    assert used.status_code == 400  # the link died with its code


async def test_a_reset_code_does_not_verify_and_a_verify_code_does_not_reset(app: Served) -> None:
    assert app.smtp is not None
    await app.client.post(
        "/auth/register", json={"email": "both@example.com", "password": PASSWORD}
    )
    [received] = await app.smtp.sink.wait_for(1, to="both@example.com")
    verify_code = code_in(received)
    assert_invalid_code(await exchange(app, "both@example.com", verify_code))


# -- the caps, across two API processes ------------------------------------------------------------


async def test_the_caps_hold_across_two_api_processes(
    tmp_path: Path,
    smtp: Smtp,
    clock: FakeClock,
    backend_settings: dict[str, Any],
) -> None:
    """Two API processes on one database (and, scaled out, one Redis): the tries at one code
    are counted in the database, so both together get `code_tries`; the tries at one address from
    several clients and both processes together get the per-address budget (kept in Redis, or
    else in the database) — the same for an address with and without an account."""
    common: dict[str, Any] = {"smtp_url": smtp.url, **backend_settings}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        serve(make_settings(tmp_path / "a", **common), clock, smtp) as first,
        serve(
            make_settings(tmp_path / "b", embedded_worker=False, **common), clock, smtp
        ) as second,
    ):
        await first.create_user("two@example.com")
        _, code = await reset_mail(first, "two@example.com")
        tries = first.settings.code_tries
        for i in range(tries):
            assert_invalid_code(
                await exchange((first, second)[i % 2], "two@example.com", wrong(code))
            )
        assert_invalid_code(await exchange(first, "two@example.com", code))
        assert_invalid_code(await exchange(second, "two@example.com", code))

        budget = first.settings.limit("rate_limit_code_per_address").amount
        await first.create_user("many@example.com")
        _, code = await reset_mail(first, "many@example.com")
        for email in ("many@example.com", "nobody-many@example.com"):
            answers: list[int] = []
            for i in range(budget + 1):
                api = (first, second)[i % 2]
                async with api.client_from(f"127.0.0.{2 + i % 3}") as client:
                    guess = f"{i:0{CODE_DIGITS}d}"
                    answers.append((await exchange(api, email, guess, client)).status_code)
            assert answers == [400] * budget + [429], (email, answers)
        # Over the budget, even the right code waits: the count is of tries, not of failures.
        refused = await exchange(second, "many@example.com", code)
        assert refused.status_code == 429
        assert refused.headers["x-ratelimit-scope"] == "code-address"


async def test_each_try_spends_the_clients_token_budget(
    tmp_path: Path, smtp: Smtp, clock: FakeClock
) -> None:
    """A try at a code counts against the same per-client budget as the token endpoints."""
    settings = make_settings(tmp_path, smtp_url=smtp.url, rate_limit_token_per_ip="3/hour")
    async with serve(settings, clock, smtp) as app:
        await app.client.post("/auth/password-reset/verify", json={"token": "A" * 43})
        assert_invalid_code(await exchange(app, "x@example.com", "12345678"))
        assert_invalid_code(await exchange(app, "y@example.com", "12345678"))
        limited = await exchange(app, "z@example.com", "12345678")
        assert limited.status_code == 429
        assert limited.headers["x-ratelimit-scope"] == "token-ip"
        async with app.client_from("127.0.0.2") as elsewhere:
            assert_invalid_code(await exchange(app, "z@example.com", "12345678", elsewhere))


async def test_both_exchanges_are_in_the_openapi_document(app: Served) -> None:
    document = (await app.client.get("/openapi.json")).json()
    for path, operation_id in (
        (RESET_CODE, "exchange-password-reset-code"),
        (VERIFY_CODE, "verify-email-code"),
    ):
        operation = document["paths"][path]["post"]
        assert operation["operationId"] == operation_id
        assert "invalid_code" in operation["responses"]["400"]["description"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert body == "#/components/schemas/CodeRequest"
    schemas = document["components"]["schemas"]
    assert set(schemas["CodeRequest"]["required"]) == {"email", "code"}
    assert set(schemas["PasswordResetCodeResponse"]["required"]) == {"token", "expires_at"}
