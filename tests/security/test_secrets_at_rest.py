"""No usable token at rest, nothing personal in logs (docs/security.md, "Security decisions";
SECURITY.md).

The scenario runs the whole flow with every logger at DEBUG — what an operator chasing a
problem would switch on — and then reads every log record and every byte of the database."""

from __future__ import annotations

import logging
import re
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import NEW_PASSWORD, PASSWORD, Served

ADDRESS = "Private.Person@Example.com"
SIGNUP = "Signing.Up@Example.com"
THIRD_PASSWORD = "yet another long passphrase 31"
VERIFY_LINK = re.compile(r"/verify-email#token=([A-Za-z0-9_-]{43,})")


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
    bearer = {"Authorization": f"Bearer {login.json()['token']}"}
    assert (await app.client.get("/auth/sessions", headers=bearer)).status_code == 200
    changed = await app.client.post(
        "/auth/password/change",
        headers=bearer,
        json={"current_password": NEW_PASSWORD, "password": THIRD_PASSWORD},
    )
    assert changed.status_code == 200
    operator_link = await app.runtime.recovery.operator_link(
        await app.runtime.accounts.find(ADDRESS)
    )

    signed_up = await app.client.post(
        "/auth/register", json={"email": SIGNUP, "password": PASSWORD}
    )
    assert signed_up.status_code == 202
    assert app.smtp is not None
    [mail] = await app.smtp.sink.wait_for(1, to=SIGNUP.lower())
    found = VERIFY_LINK.search(mail.text())
    assert found
    verified = await app.client.post("/auth/verify-email", json={"token": found.group(1)})
    assert verified.status_code == 200
    await app.settle()
    return {
        "reset token": reset_token,
        "operator's reset token": operator_link.rpartition("=")[2],
        "verification token": found.group(1),
        "session from confirm": confirmed.json()["token"],
        "session from login": login.json()["token"],
        "session from change": changed.json()["token"],
        "session from verification": verified.json()["token"],
        "old password": PASSWORD,
        "new password": NEW_PASSWORD,
        "third password": THIRD_PASSWORD,
    }


def forbidden_in_text(secrets: dict[str, str]) -> dict[str, str]:
    return {
        **secrets,
        "address": ADDRESS.lower(),
        "address as typed": ADDRESS,
        "unknown address": "nobody-here@example.com",
        "local part": "private.person",
        "signed-up address": SIGNUP,
        "signed-up local part": "signing.up",
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
        digests += [row[0] for row in db.execute("SELECT token_digest FROM verify_tokens")]
        digests += [row[0] for row in db.execute("SELECT token_digest FROM sessions")]
        payloads = [row[0] for row in db.execute("SELECT payload FROM outbox")]
        every_value = [
            str(value)
            for table in (
                "users",
                "sessions",
                "reset_tokens",
                "verify_tokens",
                "outbox",
                "audit_events",
            )
            for row in db.execute(f"SELECT * FROM {table}")  # noqa: S608 - fixed names
            for value in row
            if isinstance(value, str) and len(value) >= 8
        ]
    # two reset tokens (mailed, operator's), one verification token, four sessions (confirm,
    # login, change, verification): we looked at the right place
    assert len(digests) == 7
    # once handled, a request forgets the string the client typed
    assert payloads == [None] * len(payloads)

    # A copy of the database alone does not reset anyone's password: no stored value works.
    for value in every_value:
        response = await app.client.post("/auth/password-reset/verify", json={"token": value})
        assert response.status_code == 400
        response = await app.client.post("/auth/verify-email", json={"token": value})
        assert response.status_code == 400
        me = await app.client.get("/auth/me", headers={"Authorization": f"Bearer {value}"})
        assert me.status_code == 401


async def test_mail_files_hold_the_link_only_in_the_message(app: Served) -> None:
    # The outbox never holds a rendered message: nothing in it contains a link or a token.
    await app.create_user(ADDRESS)
    _, token = await app.reset_link(ADDRESS)
    async with app.runtime.store.tx() as tx:
        rows = await tx.outbox.listing()
        assert rows
        for row in rows:
            assert token not in repr(row.payload)
            assert "reset-password" not in repr(row.payload)
