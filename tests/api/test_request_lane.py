"""POST /auth/password-reset/request through `RequestLane`: the lean ASGI layer in front of the
stack answers a JSON body that validates; everything else goes on to the FastAPI route.
Whichever way a request goes, the client sees the same bytes, the request is recorded durably
(or, refused, not at all), and it is counted and logged under the route template like any
other request.

There is no peeking at which layer answered: the same request sent with another JSON media type
(`application/merge-patch+json`, which only the FastAPI route takes) is the reference answer.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chaser_auth.api.reset import RESET_REQUEST_PATH
from tests.api.test_reset_request import REQUESTED, VARYING
from tests.conftest import EVERY_BACKEND, FakeClock, Served, Smtp, make_settings, serve
from tests.test_cli import operator_env, serving, tmp_env
from tests.test_observability import changes, parse_metrics, series

BACKENDS = EVERY_BACKEND  # SQLite with process memory; PostgreSQL with Redis

RESET_KIND = "password_reset_request"
FASTAPI_ONLY = "application/merge-patch+json"  # JSON to FastAPI, not taken by the fast path
# Spellings of the JSON media type the fast path takes.
JSON_TYPES = ("application/json", "application/json; charset=utf-8", "APPLICATION/JSON")
BODY = b'{"email": "fast.path@example.com"}'
AT_OFFSET = "<offset>"


def comparable(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    """Status, body bytes and every header (each occurrence) but the per-request ones."""
    headers = sorted((k, v) for k, v in response.headers.multi_items() if k not in VARYING)
    return response.status_code, response.content, headers


async def post(app: Served, body: bytes, content_type: str, **headers: str) -> httpx.Response:
    return await app.client.post(
        RESET_REQUEST_PATH, content=body, headers={"Content-Type": content_type, **headers}
    )


async def reset_rows(app: Served) -> int:
    async with app.runtime.store.tx() as tx:
        return sum(row.kind == RESET_KIND for row in await tx.outbox.listing())


# -- the everyday request -----------------------------------------------------------------------


async def test_every_spelling_of_json_gets_the_same_answer_as_the_fastapi_route(
    app: Served,
) -> None:
    answers = []
    for count, content_type in enumerate((*JSON_TYPES, FASTAPI_ONLY), start=1):
        response = await post(app, BODY, content_type)
        # Answered only once recorded: the row is there as soon as the answer is.
        assert await reset_rows(app) == count, content_type
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"]), content_type
        assert response.headers["date"], content_type
        answers.append(response)

    reference = comparable(answers[-1])  # the FastAPI route's answer
    assert reference[0] == 200
    assert json.loads(reference[1]) == REQUESTED
    assert dict(reference[2])["content-type"] == "application/json"
    assert dict(reference[2])["cache-control"] == "no-store"
    for content_type, response in zip(JSON_TYPES, answers, strict=False):
        assert comparable(response) == reference, content_type
    assert len({r.headers["x-request-id"] for r in answers}) == len(answers)


@pytest.mark.parametrize(
    ("body", "field", "kind", "message"),
    [
        (b"{}", "email", "missing", "This field is required."),
        (b'{"mail": "a@example.com"}', "email", "missing", "This field is required."),
        (b'{"email": 5}', "email", "string_type", "Expected a string."),
        (b'{"email": null}', "email", "string_type", "Expected a string."),
        (b'{"email": ["a@example.com"]}', "email", "string_type", "Expected a string."),
        (b"not json", AT_OFFSET, "json_invalid", "The body is not valid JSON."),
        (b'{"email": "a@example.com"', AT_OFFSET, "json_invalid", "The body is not valid JSON."),
        (b"", None, "missing", "A JSON body is required."),
        (
            b'["a@example.com"]',
            None,
            "model_attributes_type",
            "Expected a JSON object (with Content-Type: application/json).",
        ),
    ],
    ids=[
        "empty-object",
        "other-key",
        "number",
        "null",
        "array-address",
        "not-json",
        "truncated",
        "empty-body",
        "array",
    ],
)
async def test_a_body_that_does_not_validate_gets_the_fastapi_422_and_is_not_recorded(
    app: Served, body: bytes, field: str | None, kind: str, message: str
) -> None:
    answers = [await post(app, body, content_type) for content_type in (*JSON_TYPES, FASTAPI_ONLY)]
    reference = comparable(answers[-1])
    assert reference[0] == 422
    answer = json.loads(reference[1])
    if field == AT_OFFSET:
        # FastAPI names where decoding stopped (a character offset) where a field would be.
        [detail] = answer["error"]["details"]
        assert detail["field"] is None or detail["field"].isdigit(), detail
        field = detail["field"]
    assert answer == {
        "error": {
            "code": "invalid_request",
            "message": "The request body is not valid.",
            "details": [{"field": field, "type": kind, "message": message}],
        }
    }
    assert b"a@example.com" not in reference[1]  # input is never echoed
    for content_type, response in zip(JSON_TYPES, answers, strict=False):
        assert comparable(response) == reference, content_type
        assert response.headers["cache-control"] == "no-store"
    assert await reset_rows(app) == 0


async def test_a_body_in_pieces_and_a_client_request_id_get_the_same_answer(app: Served) -> None:
    async def pieces() -> AsyncIterator[bytes]:  # sent chunked, without a Content-Length
        yield BODY[:9]
        yield BODY[9:]

    json_type = {"Content-Type": "application/json"}
    streamed = await app.client.post(
        RESET_REQUEST_PATH, content=pieces(), headers={**json_type, "X-Request-ID": "trace-1"}
    )
    plain = await post(app, BODY, "application/json", **{"X-Request-ID": "trace-2"})
    assert comparable(streamed) == comparable(plain)
    assert streamed.status_code == 200
    assert (streamed.headers["x-request-id"], plain.headers["x-request-id"]) == (
        "trace-1",
        "trace-2",
    )
    assert await reset_rows(app) == 2


# -- the per-IP limit ---------------------------------------------------------------------------


async def test_the_per_ip_limit_refuses_on_the_fast_path_in_the_error_shape(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    settings = make_settings(
        tmp_path, **backend_settings, smtp_url=smtp.url, rate_limit_reset_per_ip="2/minute"
    )
    async with serve(settings, clock, smtp) as app:
        allowed = [await post(app, BODY, "application/json") for _ in range(2)]
        assert [r.status_code for r in allowed] == [200, 200]
        assert await reset_rows(app) == 2

        started = time.time()
        refused = await post(app, BODY, "application/json; charset=utf-8")
        assert refused.status_code == 429
        assert refused.json() == {
            "error": {
                "code": "rate_limited",
                "message": "Too many requests. Try again later.",
                "details": [],
            }
        }
        headers = refused.headers
        assert headers["x-ratelimit-limit"] == "2"
        assert headers["x-ratelimit-remaining"] == "0"
        assert headers["x-ratelimit-scope"] == "ip"
        assert 1 <= int(headers["retry-after"]) <= 60
        assert started < int(headers["x-ratelimit-reset"]) <= time.time() + 61
        assert headers["content-type"] == "application/json"
        assert headers["cache-control"] == "no-store"
        assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
        assert await reset_rows(app) == 2  # the refused request was not recorded

        # The FastAPI route refuses in the same bytes (Retry-After counts down in real time).
        reference = await post(app, BODY, FASTAPI_ONLY)
        assert reference.status_code == 429
        assert 1 <= int(reference.headers["retry-after"]) <= int(headers["retry-after"])

        def without_retry_after(response: httpx.Response) -> tuple[Any, ...]:
            status, body, rest = comparable(response)
            return status, body, [(k, v) for k, v in rest if k != "retry-after"]

        assert without_retry_after(refused) == without_retry_after(reference)
        assert await reset_rows(app) == 2


# -- metrics and the access log -----------------------------------------------------------------


def limit_env(backend_settings: dict[str, Any]) -> dict[str, str]:
    """The backend under test, as `chaser-auth serve` reads it from its environment."""
    return {f"CHASER_AUTH_{key.upper()}": str(value) for key, value in backend_settings.items()}


def test_fast_path_requests_are_counted_and_logged_under_the_route_template(
    tmp_path: Path, backend_settings: dict[str, Any]
) -> None:
    operator, operator_url = operator_env()
    env = tmp_env(tmp_path) | limit_env(backend_settings) | operator
    given_id = "request-lane-1"
    with (
        serving(tmp_path, env) as url,
        httpx.Client(base_url=url, timeout=30) as client,
        httpx.Client(base_url=operator_url, timeout=30) as scraper,
    ):
        before = parse_metrics(scraper.get("/metrics").text)
        answers = [
            client.post(
                RESET_REQUEST_PATH,
                content=BODY,
                headers={
                    "Content-Type": content_type,
                    **({"X-Request-ID": given_id} if i == 0 else {}),
                },
            )
            for i, content_type in enumerate(JSON_TYPES)
        ]
        after = parse_metrics(scraper.get("/metrics").text)
    assert [r.status_code for r in answers] == [200] * len(JSON_TYPES)
    request_ids = [r.headers["x-request-id"] for r in answers]
    assert request_ids[0] == given_id
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in request_ids[1:])

    assert changes(before, after, "chaser_auth_http_requests_total") == {
        series(route="/metrics", method="GET", status="200"): 1,  # the first scrape
        series(route=RESET_REQUEST_PATH, method="POST", status="200"): len(JSON_TYPES),
    }
    assert changes(before, after, "chaser_auth_http_request_duration_seconds_count") == {
        series(route="/metrics", method="GET"): 1,
        series(route=RESET_REQUEST_PATH, method="POST"): len(JSON_TYPES),
    }

    records = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines()]
    access = [r for r in records if r["logger"] == "chaser_auth.access"]
    for request_id in request_ids:
        [record] = [r for r in access if r.get("request_id") == request_id]
        assert record["method"] == "POST"
        assert record["path"] == RESET_REQUEST_PATH
        assert record["status"] == 200
        assert isinstance(record["duration_ms"], int | float)
    assert "fast.path" not in (tmp_path / "serve.log").read_text()  # the address is never logged
