"""The delivery worker's batches: a round claims many rows, plans the reset requests among them
together (one account look-up, one per-address limit call, one minting transaction), sends,
and records every outcome at once — and one row it cannot read does not stop the rest."""

from __future__ import annotations

import logging
import random
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, cast

import pytest

from chaser_auth.domain.outbox import RESET_REQUEST
from chaser_auth.store.repositories import new_outbox_row
from chaser_auth.store.tables import OutboxMessage
from tests.conftest import (
    EVERY_BACKEND,
    FakeClock,
    Received,
    Served,
    Smtp,
    make_settings,
    serve,
)

BACKENDS = EVERY_BACKEND  # SQLite with process memory; PostgreSQL with Redis

WORKER_LOGGER = "chaser_auth.worker"


async def outbox(app: Served) -> list[OutboxMessage]:
    async with app.runtime.store.tx() as tx:
        return list(await tx.outbox.listing())


def message_id(row: OutboxMessage) -> str:
    return f"<{row.id.hex}@localhost>"


async def verify(app: Served, received: Received) -> int:
    response = await app.client.post(
        "/auth/password-reset/verify", json={"token": received.link()[1]}
    )
    return response.status_code


async def test_a_mixed_batch_is_planned_sent_and_recorded_in_one_round(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    settings = make_settings(tmp_path, **backend_settings, smtp_url=smtp.url, embedded_worker=False)
    async with serve(settings, clock, smtp) as app:
        first = uuid.UUID(await app.create_user("first@example.com"))
        second = uuid.UUID(await app.create_user("second@example.com"))
        disabled = uuid.UUID(await app.create_user("disabled@example.com"))
        await app.runtime.accounts.set_active("disabled@example.com", False)

        # What the clients typed, and whose it is: the first account's six in several spellings
        # of one address, so they share one allowance.
        typed = [
            *(
                (form, "first")
                for form in (
                    "first@example.com",
                    "First@Example.com",
                    " first@example.com ",
                    "FIRST@EXAMPLE.COM",
                    "first@EXAMPLE.com",
                    "first@example.com",
                )
            ),
            ("disabled@example.com", "disabled"),
            ("Disabled@example.com", "disabled"),
            ("second@example.com", "second"),
            ("Second@Example.com", "second"),
            *((f"ghost{i}@example.com", "unknown") for i in range(30)),
        ]
        random.Random(2026).shuffle(typed)
        for address, _ in typed:
            answer = await app.request_reset(address)
            assert answer.status_code == 200
            clock.advance(1)  # each row its own time: the claim (and so the plan) keeps this order

        # The worker is off: everything waits in the outbox, and nothing has been sent.
        queued = await outbox(app)
        assert [r.status for r in queued] == ["queued"] * len(typed)
        assert smtp.sink.messages == []
        owner = dict(typed)
        whose = {r.id: owner[r.payload["email"]] for r in queued if r.payload}
        assert len(whose) == len(typed)

        worker = app.runtime.worker()
        assert await worker.run_once() == len(typed)  # every row in one round
        assert await worker.run_once() == 0  # … and none left over

        # Outcomes, per account, in the order the requests came in.
        rows = await outbox(app)
        assert {r.status for r in rows} == {"done"}
        assert all(r.payload is None for r in rows)  # what the clients typed is gone
        outcomes: dict[str, list[str]] = {}
        for row in rows:
            outcomes.setdefault(whose[row.id], []).append(str(row.outcome))
        assert outcomes == {
            "first": ["sent"] * 3 + ["suppressed"] * 3,
            "second": ["sent"] * 2,
            "disabled": ["no_account"] * 2,
            "unknown": ["no_account"] * 30,
        }
        assert Counter(str(r.outcome) for r in rows) == {
            "sent": 5,
            "suppressed": 3,
            "no_account": 32,
        }

        # Mail: three to the first account, two to the second, none to anyone else.
        assert len(smtp.sink.messages) == 5
        assert len(smtp.sink.to("first@example.com")) == 3
        assert len(smtp.sink.to("second@example.com")) == 2
        assert smtp.sink.to("disabled@example.com") == []
        assert not any(r.startswith("ghost") for m in smtp.sink.messages for r in m.recipients)
        assert not smtp.sink.refused

        # Each mail is its row's (Message-ID), and only the newest link of an account works.
        by_message = {message_id(r): r for r in rows}
        for account, address in ((first, "first@example.com"), (second, "second@example.com")):
            mails = sorted(
                smtp.sink.to(address),
                key=lambda m: by_message[m.message["Message-ID"]].created_at,
            )
            sent_rows = [by_message[m.message["Message-ID"]] for m in mails]
            assert all(r.outcome == "sent" and r.user_id == account for r in sent_rows)
            *older, newest = mails
            assert [await verify(app, m) for m in older] == [400] * len(older)
            assert await verify(app, newest) == 200

        # The audit trail: one `reset_requested` per request, a `reset_suppressed` per throttled
        # one, a `mail_sent` per mail.
        async with app.runtime.store.tx() as tx:
            requested = await tx.audit.listing(event="reset_requested", limit=1000)
            suppressed = await tx.audit.listing(event="reset_suppressed", limit=1000)
            mailed = await tx.audit.listing(event="mail_sent", limit=1000)
            issued = await tx.audit.listing(event="reset_token_issued", limit=1000)
        assert Counter(e.user_id for e in requested) == {
            first: 6,
            second: 2,
            disabled: 2,
            None: 30,
        }
        firsts = {e.subject for e in requested if e.user_id == first}
        assert len(firsts) == 1  # six spellings, one address
        assert len({e.subject for e in requested if e.user_id is None}) == 30
        assert all(e.subject and "@" not in e.subject for e in requested)
        assert [(e.user_id, e.subject) for e in suppressed] == [(first, *firsts)] * 3
        assert Counter(e.user_id for e in mailed) == {first: 3, second: 2}
        assert all(e.detail == {"kind": RESET_REQUEST} for e in mailed)
        assert Counter(e.user_id for e in issued) == {first: 3, second: 2}


async def test_one_unreadable_row_does_not_stop_its_batch(
    tmp_path: Path,
    smtp: Smtp,
    clock: FakeClock,
    backend_settings: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(tmp_path, **backend_settings, smtp_url=smtp.url, embedded_worker=False)
    async with serve(settings, clock, smtp) as app:
        await app.create_user("alpha@example.com")
        await app.create_user("beta@example.com")
        assert (await app.request_reset("alpha@example.com")).status_code == 200
        clock.advance(1)
        # A corrupt row in the middle of the batch: a JSON list where the planner reads an object.
        bad = new_outbox_row(RESET_REQUEST, clock.now, payload=["canary@example.com"])  # type: ignore[arg-type]
        async with app.runtime.store.tx() as tx:
            await tx.outbox.add_many([bad])
        clock.advance(1)
        assert (await app.request_reset("beta@example.com")).status_code == 200
        clock.advance(1)

        assert await app.runtime.worker().run_once() == 3
        await smtp.sink.wait_for(2)
        assert len(smtp.sink.to("alpha@example.com")) == 1
        assert len(smtp.sink.to("beta@example.com")) == 1
        assert len(smtp.sink.messages) == 2
        for received in smtp.sink.messages:
            assert await verify(app, received) == 200

        rows = {r.id: r for r in await outbox(app)}
        corrupt = rows.pop(bad["id"])
        assert (corrupt.status, corrupt.attempts, corrupt.outcome) == ("queued", 1, None)
        assert corrupt.last_error is not None and corrupt.last_error.startswith("error_")
        assert corrupt.available_at > clock.now  # backed off, to be tried again
        # kept for the operator to look at (a list, not the dict the column is declared as)
        assert cast(object, corrupt.payload) == ["canary@example.com"]
        assert sorted((r.status, str(r.outcome)) for r in rows.values()) == [("done", "sent")] * 2

        # The logs name the row and the exception's type, never what the row held.
        logged = [r.getMessage() for r in caplog.records]
        assert not any("canary" in line for line in logged)
        failed = [line for line in logged if bad["id"].hex in line or str(bad["id"]) in line]
        assert failed
        assert any(corrupt.last_error.removeprefix("error_") in line for line in failed)
