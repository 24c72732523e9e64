"""What every response shares: the error shape for routing errors, request ids, no-store,
health endpoints."""

from __future__ import annotations

import re

from tests.conftest import Served


async def test_health_and_readiness(app: Served) -> None:
    health = await app.client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    ready = await app.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}
    assert ready.headers["cache-control"] == "no-store"


async def test_unknown_path_and_wrong_method_use_the_error_shape(app: Served) -> None:
    missing = await app.client.get("/nothing/here")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = await app.client.get("/auth/password-reset/request")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"
    assert wrong.headers["allow"] == "POST"
    slash = await app.client.post("/auth/password-reset/request/", json={"email": "a@b.co"})
    assert slash.status_code == 404  # no redirect built from the client's Host header
    assert "location" not in slash.headers
    for response in (missing, wrong, slash):
        assert response.headers["cache-control"] == "no-store"
        assert set(response.json()["error"]) == {"code", "message", "details"}


async def test_request_id_is_kept_when_sane_and_replaced_when_not(app: Served) -> None:
    kept = await app.client.get("/healthz", headers={"X-Request-ID": "trace-abc.123_X"})
    assert kept.headers["x-request-id"] == "trace-abc.123_X"
    for bad in (b"has space", b"x" * 65, "new\u00e9line".encode()):
        replaced = await app.client.get("/healthz", headers={b"X-Request-ID": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"])
    first = await app.client.get("/healthz")
    second = await app.client.get("/healthz")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
