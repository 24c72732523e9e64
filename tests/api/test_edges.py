"""What every response shares: the error shape for routing errors, request ids, no-store,
health endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, Served


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


async def test_an_unexpected_failure_is_a_bare_500_in_the_error_shape(
    app: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A real fault, not a mock: a session row whose account id the database mangled.
    await app.create_user("broken@example.com")
    login = await app.client.post(
        "/auth/login", json={"email": "broken@example.com", "password": PASSWORD}
    )
    token = login.json()["token"]

    def corrupt() -> None:
        with contextlib.closing(sqlite3.connect(tmp_path / "auth.db", timeout=10)) as db, db:
            db.execute("UPDATE sessions SET user_id = 'not-a-uuid-at-all'")

    await asyncio.to_thread(corrupt)
    response = await app.client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "code": "internal_error",
            "message": "Something went wrong on our side.",
            "details": [],
        }
    }
    assert response.headers["cache-control"] == "no-store"
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    records = [r for r in caplog.records if r.name == "chaser_auth.errors"]
    # The error is logged with the request's id (a field of the record, as in the JSON logs).
    assert any(getattr(r, "request_id", None) == response.headers["x-request-id"] for r in records)
    logged = [r.getMessage() for r in records]
    assert not any("not-a-uuid" in line or "Traceback" in line for line in logged)
