"""No usable token at rest, nothing personal in logs (SPEC §3).

The scenario runs the whole flow with every logger at DEBUG — what an operator chasing a
problem would switch on — and then reads every log record and every byte of the database."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import NEW_PASSWORD, PASSWORD, Served

ADDRESS = "Private.Person@Example.com"


async def run_flow(app: Served) -> dict[str, str]:
    await app.create_user(ADDRESS)
    await app.request_reset("nobody-here@example.com")
    _, reset_token = await app.reset_link(ADDRESS)
    confirmed = await app.client.post(
        "/auth/password-reset/confirm", json={"token": reset_token, "password": NEW_PASSWORD}
    )
    assert confirmed.status_code == 200
    login = await app.client.post("/auth/login", json={"email": ADDRESS, "password": NEW_PASSWORD})
    assert login.status_code == 200
    wrong = await app.client.post("/auth/login", json={"email": ADDRESS, "password": PASSWORD})
    assert wrong.status_code == 401
    await app.settle()
    return {
        "reset token": reset_token,
        "session from confirm": confirmed.json()["token"],
        "session from login": login.json()["token"],
        "old password": PASSWORD,
        "new password": NEW_PASSWORD,
    }


def forbidden_in_text(secrets: dict[str, str]) -> dict[str, str]:
    return {
        **secrets,
        "address": ADDRESS.lower(),
        "address as typed": ADDRESS,
        "unknown address": "nobody-here@example.com",
        "local part": "private.person",
    }


async def test_no_log_line_holds_an_address_token_or_password(
    app: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = await run_flow(app)
    # Every record but those of the test's own SMTP server (aiosmtpd logs as "mail.log"),
    # which plays the recipient's mail system, not ours.
    ours = [r for r in caplog.records if not r.name.startswith("mail.log")]
    lines = [record.getMessage() for record in ours]
    lines += [str(record.args) for record in ours if record.args]
    lines += [str(record.exc_info) for record in ours if record.exc_info]
    assert {r.name for r in ours} >= {"chaser_auth.access", "chaser_auth.worker"}
    for name, value in forbidden_in_text(secrets).items():
        for line in lines:
            assert value.lower() not in line.lower(), f"{name} appears in a log line: {line!r}"


async def test_database_holds_no_usable_token_or_password(app: Served, tmp_path: Path) -> None:
    secrets = await run_flow(app)
    files = [p for p in tmp_path.iterdir() if p.name.startswith("auth.db")]
    assert files
    blob = b"".join(p.read_bytes() for p in files)
    for name, value in secrets.items():
        assert value.encode() not in blob, f"{name} is stored in the database"

    with sqlite3.connect(tmp_path / "auth.db") as db:
        digests = [row[0] for row in db.execute("SELECT token_digest FROM reset_tokens")]
        digests += [row[0] for row in db.execute("SELECT token_digest FROM sessions")]
        payloads = [row[0] for row in db.execute("SELECT payload FROM outbox")]
        every_value = [
            str(value)
            for table in ("users", "sessions", "reset_tokens", "outbox", "audit_events")
            for row in db.execute(f"SELECT * FROM {table}")  # noqa: S608 - fixed names
            for value in row
            if isinstance(value, str) and len(value) >= 8
        ]
    assert len(digests) == 3  # one reset token, two sessions: we looked at the right place
    # once handled, a request forgets the string the client typed
    assert payloads == [None] * len(payloads)

    # A copy of the database alone does not reset anyone's password: no stored value works.
    for value in every_value:
        response = await app.client.post("/auth/password-reset/verify", json={"token": value})
        assert response.status_code == 400
        me = await app.client.get("/auth/me", headers={"Authorization": f"Bearer {value}"})
        assert me.status_code == 401


async def test_mail_files_hold_the_link_only_in_the_message(app: Served) -> None:
    # The outbox never holds a rendered message: nothing in it contains a link or a token.
    await app.create_user(ADDRESS)
    link, token = await app.reset_link(ADDRESS)
    async with app.runtime.store.tx() as tx:
        rows = await tx.outbox.listing()
        assert rows
        for row in rows:
            assert token not in repr(row.payload)
            assert "reset-password" not in repr(row.payload)
