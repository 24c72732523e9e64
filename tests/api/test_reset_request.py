"""POST /auth/password-reset/request — the reset request (docs/api.md)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from chaser_auth.config import Settings
from tests.conftest import EVERY_BACKEND, FakeClock, Served, Smtp, make_settings, serve

BACKENDS = EVERY_BACKEND  # SQLite with process memory; PostgreSQL with Redis

REQUESTED = {
    "message": "If an account exists for this email address, a link to reset its password "
    "has been sent to it."
}
VARYING = {"date", "x-request-id"}


def comparable(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = sorted((k, v) for k, v in response.headers.items() if k not in VARYING)
    return response.status_code, response.content, headers


async def test_answer_is_identical_for_known_unknown_malformed_and_throttled(app: Served) -> None:
    await app.create_user("known@example.com")
    disabled = await app.create_user("disabled@example.com")
    async with app.runtime.store.tx() as tx:
        user = await tx.users.get(uuid.UUID(disabled))
        assert user is not None
        user.is_active = False
    await app.create_user("throttled@example.com")
    for _ in range(3):  # use up the per-address allowance of 3/hour
        await app.reset_link("throttled@example.com")

    answers = [
        await app.request_reset(email)
        for email in (
            "known@example.com",
            "nobody@example.com",
            "disabled@example.com",
            "not an address",
            "",
            "throttled@example.com",
            "KNOWN@EXAMPLE.COM ",
        )
    ]
    first = comparable(answers[0])
    assert first[0] == 200
    assert json.loads(first[1]) == REQUESTED
    for other in answers[1:]:
        assert comparable(other) == first
    for answer in answers:
        assert answer.headers["cache-control"] == "no-store"
        assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["x-request-id"])
        assert not any(h.startswith("x-ratelimit") for h in answer.headers)


async def test_mail_goes_to_the_stored_address_with_a_working_link(app: Served) -> None:
    await app.create_user("Mixed.Case@Example.org")
    response = await app.request_reset("  mixed.case@EXAMPLE.ORG ")
    assert response.status_code == 200
    assert app.smtp is not None
    [received] = await app.smtp.sink.wait_for(1)
    assert received.recipients == ["Mixed.Case@example.org"]
    message = received.message
    assert message["To"] == "Mixed.Case@example.org"
    assert message["From"] == app.settings.mail_from
    assert message["Subject"] == "Reset your password"
    assert message["Date"]
    assert re.fullmatch(r"<[0-9a-f]{32}@localhost>", message["Message-ID"])
    assert message.get_content_type() == "multipart/alternative"
    link, token = received.link()
    assert link == f"{app.settings.public_url}/reset-password#token={token}"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", token)
    assert link in received.html()
    verify = await app.client.post("/auth/password-reset/verify", json={"token": token})
    assert verify.status_code == 200
    assert verify.json()["valid"] is True


@pytest.mark.parametrize(
    ("typed", "local", "domain"),
    [
        ("jörg.müller@example.com", "jörg.müller", "example.com"),  # RFC 6531/6532
        ("Zoë@Bücher.example", "Zoë", "xn--bcher-kva.example"),
        ("a,b@example.com", "a,b", "example.com"),  # a local part only valid when quoted
    ],
)
async def test_addresses_beyond_the_plain_ascii_dot_atom_get_their_mail(
    app: Served, typed: str, local: str, domain: str
) -> None:
    # An account may be opened with any of these (`addresses`): its reset mail must reach it,
    # addressed exactly to the stored local part (never re-parsed into another address).
    await app.create_user(typed)
    assert (await app.request_reset(typed)).status_code == 200
    assert app.smtp is not None
    [received] = await app.smtp.sink.wait_for(1)
    [to] = received.message["To"].addresses
    assert (to.username, to.domain) == (local, domain)
    assert received.recipients == [to.addr_spec]
    _, token = received.link()
    verify = await app.client.post("/auth/password-reset/verify", json={"token": token})
    assert verify.json()["valid"] is True


async def test_link_uses_configured_public_url_never_the_host_header(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    settings = make_settings(
        tmp_path, **backend_settings, smtp_url=smtp.url, public_url="https://id.example.net/"
    )
    async with serve(settings, clock, smtp) as app:
        await app.create_user("host@example.com")
        await app.request_reset(
            "host@example.com", headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
        )
        [received] = await smtp.sink.wait_for(1)
        assert "https://id.example.net/reset-password#token=" in received.text()
        assert "evil" not in received.text() and "evil" not in received.html()


async def test_per_address_limit_sends_three_then_answers_the_same(app: Served) -> None:
    await app.create_user("busy@example.com")
    answers = [await app.request_reset("busy@example.com") for _ in range(5)]
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    await app.settle()
    assert app.smtp is not None
    assert len(app.smtp.sink.to("busy@example.com")) == 3
    async with app.runtime.store.tx() as tx:
        outcomes = sorted(str(m.outcome) for m in await tx.outbox.listing())
    assert outcomes == ["sent", "sent", "sent", "suppressed", "suppressed"]


async def test_unknown_address_gets_no_mail_by_default(app: Served) -> None:
    await app.request_reset("ghost@example.com")
    await app.settle()
    assert app.smtp is not None
    assert app.smtp.sink.messages == []


async def test_unknown_address_is_told_when_notify_unknown_is_on(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    settings = make_settings(tmp_path, **backend_settings, smtp_url=smtp.url, notify_unknown=True)
    async with serve(settings, clock, smtp) as app:
        await app.request_reset("Ghost@Example.com")
        [received] = await smtp.sink.wait_for(1)
        assert received.recipients == ["Ghost@example.com"]
        assert "there is no account" in " ".join(received.text().split())
        assert "token=" not in received.text()


@pytest.mark.parametrize(
    ("body", "content_type", "field"),
    [
        (b"", "application/json", None),
        (b"not json", "application/json", None),
        (b"{", "application/json", None),
        (b"[]", "application/json", None),
        (b'"user@example.com"', "application/json", None),
        (b"{}", "application/json", "email"),
        (b'{"email": 5}', "application/json", "email"),
        (b'{"email": null}', "application/json", "email"),
        (b'{"email": ["a@example.com"]}', "application/json", "email"),
        (b'{"email": {"x": 1}}', "application/json", "email"),
        (b'{"mail": "a@example.com"}', "application/json", "email"),
        (b"email=a@example.com", "application/x-www-form-urlencoded", None),
    ],
)
async def test_a_body_that_names_no_address_is_a_422_in_the_error_shape(
    app: Served, body: bytes, content_type: str, field: str | None
) -> None:
    response = await app.client.post(
        "/auth/password-reset/request", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"]
    assert error["details"]
    if field:
        assert error["details"][0]["field"] == field
    assert "a@example.com" not in response.text  # input is never echoed
    assert response.headers["cache-control"] == "no-store"


async def test_body_over_4_kib_is_a_413(app: Served) -> None:
    big = json.dumps({"email": "a" * 5000 + "@example.com"}).encode()
    response = await app.client.post(
        "/auth/password-reset/request",
        content=big,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"

    async def chunks():  # no Content-Length: the cap still holds on a streamed body
        for _ in range(5):
            yield b" " * 1000
        yield b'{"email": "a@example.com"}'

    streamed = await app.client.post(
        "/auth/password-reset/request",
        content=chunks(),
        headers={"Content-Type": "application/json"},
    )
    assert streamed.status_code == 413
    assert streamed.json()["error"]["code"] == "payload_too_large"


async def test_exactly_4_kib_is_accepted(app: Served) -> None:
    prefix, suffix = b'{"email": "', b'"}'
    body = prefix + b"a" * (4096 - len(prefix) - len(suffix)) + suffix
    assert len(body) == 4096
    response = await app.client.post(
        "/auth/password-reset/request", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200


async def test_per_ip_limit_answers_429_with_rate_limit_headers(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    settings = make_settings(
        tmp_path, **backend_settings, smtp_url=smtp.url, rate_limit_reset_per_ip="3/minute"
    )
    async with serve(settings, clock, smtp) as app:
        ok = [await app.request_reset(f"user{i}@example.com") for i in range(3)]
        assert [r.status_code for r in ok] == [200, 200, 200]
        limited = await app.request_reset("user4@example.com")
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limited"
        headers = limited.headers
        assert headers["x-ratelimit-limit"] == "3"
        assert headers["x-ratelimit-remaining"] == "0"
        assert headers["x-ratelimit-scope"] == "ip"
        assert 1 <= int(headers["retry-after"]) <= 60
        assert int(headers["x-ratelimit-reset"]) > 0
        async with app.runtime.store.tx() as tx:
            assert len(await tx.outbox.listing()) == 3  # the refused request was not recorded


def two_per_minute(
    tmp_path: Path, smtp: Smtp, backend: dict[str, Any], *, trusted: str | None
) -> Settings:
    return make_settings(
        tmp_path,
        **backend,
        smtp_url=smtp.url,
        rate_limit_reset_per_ip="2/minute",
        trusted_proxies=trusted,
    )


async def statuses(app: Served, forwarded_for: Sequence[str | tuple[str, ...]]) -> list[int]:
    """One reset request per X-Forwarded-For value, in order; their status codes. A tuple is
    sent as that many header lines."""
    answers = []
    for value in forwarded_for:
        lines = (value,) if isinstance(value, str) else value
        headers = [("X-Forwarded-For", line) for line in lines]
        answers.append((await app.request_reset("x@example.com", headers=headers)).status_code)
    return answers


async def test_forwarded_for_counts_only_behind_a_trusted_proxy(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    async with serve(
        two_per_minute(tmp_path, smtp, backend_settings, trusted="127.0.0.1"), clock, smtp
    ) as app:
        for client in ("203.0.113.1", "203.0.113.2"):
            # the right-most untrusted hop is the client; what it put on the left is ignored
            hops = [f"198.51.100.{i}, {client}" for i in range(3)]
            assert await statuses(app, hops) == [200, 200, 429]
        # RFC 9110 §5.3: several header lines are one comma-separated list, so the client is
        # the right-most untrusted hop of the last line; a forged first line changes nothing.
        forged_first = [(f"198.51.100.{i}", "203.0.113.7") for i in range(3)]
        assert await statuses(app, forged_first) == [200, 200, 429]


async def test_forwarded_for_hops_with_a_port_count_as_their_address(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    """Some proxies write a hop as `ip:port` or `[v6]:port` (RFC 7239 §6 node forms): a new
    source port per connection must not make a new client."""
    async with serve(
        two_per_minute(tmp_path, smtp, backend_settings, trusted="127.0.0.1"), clock, smtp
    ) as app:
        assert await statuses(app, ["1.2.3.4:1111", "1.2.3.4:2222", "1.2.3.4:3333"]) == [
            200,
            200,
            429,
        ]
        assert await statuses(app, ["1.2.3.4"]) == [429]  # the very same budget
        v6 = ["[2001:db8::1]:443", "[2001:db8::2]", "2001:db8::3"]  # one /64, three spellings
        assert await statuses(app, v6) == [200, 200, 429]
        # A trusted proxy's own hop with a port is still recognised as the proxy's, and the
        # client before it is the one counted.
        via_proxy = [f"198.51.100.9, 127.0.0.1:{port}" for port in (8001, 8002, 8003)]
        assert await statuses(app, via_proxy) == [200, 200, 429]


async def test_untrusted_forwarded_for_cannot_dodge_the_limit(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    async with serve(
        two_per_minute(tmp_path, smtp, backend_settings, trusted=None), clock, smtp
    ) as app:
        assert await statuses(app, ["10.0.0.1", "10.0.0.2", "10.0.0.3"]) == [200, 200, 429]


async def test_ipv6_clients_are_limited_per_64_prefix(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    async with serve(
        two_per_minute(tmp_path, smtp, backend_settings, trusted="127.0.0.1"), clock, smtp
    ) as app:
        # three addresses of one /64 share one allowance, however they are spelled ...
        assert await statuses(app, ["2001:db8::1", "2001:db8::2", "2001:0DB8:0:0::ffff"]) == [
            200,
            200,
            429,
        ]
        # ... a neighbouring /64 has its own, and IPv4-mapped addresses count as IPv4
        assert await statuses(app, ["2001:db8:0:1::1"]) == [200]
        assert await statuses(app, ["::ffff:192.0.2.7", "192.0.2.7", "192.0.2.7"]) == [
            200,
            200,
            429,
        ]


async def test_the_body_bytes_of_the_other_sdk_snippets_are_accepted(app: Served) -> None:
    # Go, Ruby, Java, PHP and C# send this exact body (pretty-printed, with newlines);
    # Swift sends JSONSerialization's compact form.
    for body in (b'{\n  "email": "user@example.com"\n}', b'{"email":"user@example.com"}'):
        response = await app.client.post(
            "/auth/password-reset/request",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 200
        assert response.json() == REQUESTED
