"""The outbox and the delivery worker against a real SMTP server that misbehaves
(docs/operations.md, "When something fails")."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from tests.conftest import (
    EVERY_BACKEND,
    FakeClock,
    Served,
    Smtp,
    SmtpSink,
    free_port,
    make_settings,
    serve,
)
from tests.test_scale_out import HoldingSink

BACKENDS = EVERY_BACKEND  # SQLite with process memory; PostgreSQL with Redis


def dead(rows: list) -> bool:
    return bool(rows) and all(r.status == "dead" for r in rows)


def done(rows: list) -> bool:
    return bool(rows) and all(r.status == "done" for r in rows)


async def test_transient_smtp_failure_is_retried_with_the_same_message_and_link(
    app: Served,
) -> None:
    assert app.smtp is not None
    sink = app.smtp.sink
    await app.create_user("retry@example.com")
    sink.fail_with = "451 4.3.0 try again later"
    answer = await app.request_reset("retry@example.com")
    assert answer.status_code == 200
    await app.outbox_until(lambda rows: len(sink.refused) >= 2)
    sink.fail_with = None
    rows = await app.outbox_until(done)
    assert rows[0].outcome == "sent"
    assert rows[0].attempts >= 3

    [delivered] = sink.to("retry@example.com")
    assert len(sink.refused) >= 2
    for attempt in sink.refused:
        assert attempt.message["Message-ID"] == delivered.message["Message-ID"]
        assert attempt.link() == delivered.link()
    assert (
        await app.client.post("/auth/password-reset/verify", json={"token": delivered.link()[1]})
    ).status_code == 200


async def test_mail_becomes_a_dead_letter_after_max_attempts(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    settings = make_settings(tmp_path, **backend_settings, smtp_url=smtp.url, mail_max_attempts=3)
    async with serve(settings, clock, smtp) as app:
        await app.create_user("deadend@example.com")
        smtp.sink.fail_with = "421 4.7.0 closing"
        await app.request_reset("deadend@example.com")
        [row] = await app.outbox_until(dead)
        assert row.attempts == 3
        assert row.last_error == "smtp_421"
        assert len(smtp.sink.refused) == 3
        # a dead letter stays dead: nothing more is tried
        clock.advance(3600)
        app.runtime.wake.set()
        await app.settle()
        assert len(smtp.sink.refused) == 3


async def test_permanent_refusal_is_not_retried(app: Served) -> None:
    assert app.smtp is not None
    await app.create_user("refuse@example.com")
    app.smtp.sink.fail_with = "550 5.1.1 mailbox unavailable"
    await app.request_reset("refuse@example.com")
    [row] = await app.outbox_until(dead)
    assert row.attempts == 1
    assert row.last_error == "smtp_550"
    assert "refuse@example.com" not in (row.last_error or "")


async def test_one_smtp_connection_carries_message_after_message(app: Served) -> None:
    assert app.smtp is not None
    for i in range(3):
        await app.create_user(f"reuse{i}@example.com")
        await app.reset_link(f"reuse{i}@example.com")  # one at a time: each waits for its mail
    peers = {received.peer for received in app.smtp.sink.messages}
    assert len(app.smtp.sink.messages) == 3
    assert len(peers) == 1  # no new TCP connection, greeting and EHLO per message


@contextlib.contextmanager
def relay(sink: SmtpSink, port: int, **options: Any) -> Iterator[None]:
    """An aiosmtpd relay on `port` for the block (options: aiosmtpd's SMTP settings)."""
    controller = Controller(sink, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield
    finally:
        controller.stop()


async def test_a_connection_the_relay_dropped_is_replaced_without_a_failed_attempt(
    tmp_path: Path, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    sink = SmtpSink()
    smtp = Smtp(sink, free_port())
    settings = make_settings(tmp_path, **backend_settings, smtp_url=smtp.url)
    async with serve(settings, clock, smtp) as app:
        await app.create_user("before@example.com")
        await app.create_user("after@example.com")
        with relay(sink, smtp.port):
            await app.reset_link("before@example.com")
        with relay(sink, smtp.port):  # restarted: the connection kept from the first is dead
            await app.reset_link("after@example.com")
            await app.settle()
        first, second = sink.messages
        assert first.peer != second.peer
        async with app.runtime.store.tx() as tx:
            rows = await tx.outbox.listing()
        assert [(row.outcome, row.attempts) for row in rows] == [("sent", 1), ("sent", 1)]


async def test_a_relay_without_smtputf8_makes_a_non_ascii_address_a_dead_letter_at_once(
    tmp_path: Path, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    sink = SmtpSink()
    smtp = Smtp(sink, free_port())
    settings = make_settings(tmp_path, **backend_settings, smtp_url=smtp.url)
    with relay(sink, smtp.port, enable_SMTPUTF8=False):
        async with serve(settings, clock, smtp) as app:
            await app.create_user("jörg@example.com")
            await app.create_user("plain@example.com")
            await app.request_reset("jörg@example.com")
            await app.request_reset("plain@example.com")
            rows = await app.outbox_until(
                lambda rows: len(rows) == 2 and all(r.status != "queued" for r in rows)
            )
    by_status = {row.status: row for row in rows}
    assert by_status["dead"].attempts == 1
    assert by_status["dead"].last_error == "smtp_no_smtputf8"
    assert by_status["done"].outcome == "sent"
    [received] = sink.messages
    assert received.recipients == ["plain@example.com"]


async def test_smtp_server_down_then_back_loses_nothing(
    tmp_path: Path, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    port = free_port()
    sink = SmtpSink()
    settings = make_settings(tmp_path, **backend_settings, smtp_url=f"smtp://127.0.0.1:{port}")
    async with serve(settings, clock, Smtp(sink, port)) as app:
        await app.create_user("outage@example.com")
        answers = [await app.request_reset("outage@example.com") for _ in range(2)]
        # With SMTP down the answer is still the same, byte for byte, as for an unknown address.
        answers.append(await app.request_reset("nobody@example.com"))
        assert {a.status_code for a in answers} == {200}
        assert len({a.content for a in answers}) == 1
        volatile = {"date", "x-request-id"}
        assert (
            len({tuple(h for h in a.headers.items() if h[0] not in volatile) for a in answers}) == 1
        )
        rows = await app.outbox_until(
            lambda rows: (
                len(rows) == 3 and all(r.attempts >= 2 for r in rows if r.outcome != "no_account")
            )
        )
        assert {r.last_error for r in rows if r.status == "queued"} == {"smtp_SMTPConnectError"}
        with relay(sink, port):
            rows = await app.outbox_until(done)
        # The newer request revoked the older link before either could leave, so the older
        # message is dropped as stale rather than delivering a dead link.
        assert sorted(str(r.outcome) for r in rows) == ["no_account", "sent", "stale"]
        assert len(sink.to("outage@example.com")) == 1
        newest = sink.to("outage@example.com")[-1]
        verify = await app.client.post(
            "/auth/password-reset/verify", json={"token": newest.link()[1]}
        )
        assert verify.status_code == 200


@contextlib.asynccontextmanager
async def holding_relay(
    tmp_path: Path, clock: FakeClock, backend: dict[str, Any], **settings: Any
) -> AsyncIterator[tuple[Served, HoldingSink]]:
    """The service with a relay that does not answer DATA while `sink.holding` is set; let
    go before the service stops, so that its worker's last sends can finish."""
    sink = HoldingSink()
    port = free_port()
    smtp = Smtp(sink, port)
    with relay(sink, port):
        async with serve(
            make_settings(tmp_path, **backend, smtp_url=smtp.url, **settings), clock, smtp
        ) as app:
            try:
                yield app, sink
            finally:
                sink.holding.clear()


async def eventually(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    """Wait in real time (the fake clock stays where the test put it) until `check` holds."""
    deadline = time.monotonic() + 20
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def the_row(app: Served) -> Any:
    async with app.runtime.store.tx() as tx:
        [row] = await tx.outbox.listing()
    return row


async def test_a_message_held_by_the_relay_does_not_hold_up_the_rows_behind_it(
    tmp_path: Path, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    """A round does not wait for its slowest SMTP conversation: while one message sits with
    a relay that has not answered its DATA, later requests are still handled."""
    async with holding_relay(tmp_path, clock, backend_settings) as (app, sink):

        async def rows() -> list[Any]:
            async with app.runtime.store.tx() as tx:
                return list(await tx.outbox.listing())

        async def held() -> bool:
            return sink.waiting == 1

        async def five_done() -> bool:
            return sum(r.status == "done" for r in await rows()) == 5

        await app.create_user("held@example.com")
        sink.holding.set()
        assert (await app.request_reset("held@example.com")).status_code == 200
        await eventually("the message to reach the relay", held)
        for i in range(5):
            assert (await app.request_reset(f"nobody{i}@example.net")).status_code == 200
        await eventually("the five rows behind it", five_done)
        assert sink.waiting == 1 and sink.received() == 0, "the held message went meanwhile"
        handled = await rows()
        assert [r.outcome for r in handled if r.status == "done"] == ["no_account"] * 5
        assert [r.status for r in handled if r.status != "done"] == ["queued"]  # in flight

        sink.holding.clear()
        finished = await app.outbox_until(done)
        assert sorted(str(r.outcome) for r in finished) == ["no_account"] * 5 + ["sent"]
        assert len(sink.to("held@example.com")) == 1


async def test_a_message_whose_lease_runs_out_at_the_relay_is_not_sent_again_by_its_worker(
    tmp_path: Path, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    """A row still with the relay when its lease runs out (here the clock jumps past it) is
    claimed again by the worker's next round; the send under way records it, and the worker
    does not send it a second time beside it."""
    async with holding_relay(tmp_path, clock, backend_settings) as (app, sink):

        async def held() -> bool:
            return sink.waiting >= 1

        async def claimed_again() -> bool:
            return bool((await the_row(app)).attempts == 2)

        await app.create_user("lease@example.com")
        sink.holding.set()
        assert (await app.request_reset("lease@example.com")).status_code == 200
        await eventually("the message to reach the relay", held)
        clock.advance(app.settings.worker_lease + 1)  # the lease has run out: the row is due
        app.runtime.wake.set()
        await eventually("the row to be claimed again", claimed_again)
        # A second send would reach the relay within moments: give it a second to.
        deadline = time.monotonic() + 1
        while sink.waiting < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert sink.waiting == 1, "the row went to the relay a second time"

        sink.holding.clear()
        [row] = await app.outbox_until(done)
        assert row.outcome == "sent"
        await app.settle()
        assert len(sink.to("lease@example.com")) == 1
        assert sink.abandoned == []


async def test_a_slow_relay_does_not_lose_the_lease_of_the_message_it_holds(
    tmp_path: Path, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    """While a message is with a slow relay its worker renews the lease, so that another
    worker does not take the row over and send it a second time."""
    # A 2 s lease: the worker looks at its leases every half second (a quarter lease).
    async with holding_relay(tmp_path, clock, backend_settings, worker_lease=2) as (app, sink):

        async def held() -> bool:
            return sink.waiting == 1

        await app.create_user("slow@example.com")
        sink.holding.set()
        assert (await app.request_reset("slow@example.com")).status_code == 200
        await eventually("the message to reach the relay", held)
        claimed = await the_row(app)
        assert claimed.attempts == 1

        clock.advance(1.5)  # half a lease or less is left: the worker renews it

        async def renewed() -> bool:
            lease = (await the_row(app)).locked_until
            return lease is not None and lease > claimed.locked_until

        await eventually("the lease to be renewed", renewed)
        clock.advance(1.5)  # past the first lease, within the renewed one
        other = app.runtime.worker()  # another worker, as in another process
        assert await other.run_once() == 0, "another worker took over the held row"
        assert (await the_row(app)).attempts == 1 and sink.waiting == 1

        async def recorded() -> bool:
            return bool((await the_row(app)).status == "done")

        sink.holding.clear()
        # In real time: `outbox_until` would move the clock on past the 2 s lease meanwhile.
        await eventually("the message to be recorded as sent", recorded)
        finished = await the_row(app)
        assert (finished.outcome, finished.attempts) == ("sent", 1)
        assert len(sink.to("slow@example.com")) == 1


async def test_backoff_grows_exponentially_with_jitter_and_a_cap(app: Served) -> None:
    worker = app.runtime.worker()
    base, cap = app.settings.mail_retry_base, app.settings.mail_retry_max
    for attempt in range(1, 12):
        ceiling = min(cap, base * 2 ** (attempt - 1))
        delays = {worker.backoff(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered


async def test_mail_rate_cap_makes_mail_wait_without_using_up_attempts(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    settings = make_settings(tmp_path, **backend_settings, smtp_url=smtp.url, mail_rate="2/minute")
    async with serve(settings, clock, smtp) as app:
        for i in range(4):
            await app.create_user(f"capped{i}@example.com")
            await app.request_reset(f"capped{i}@example.com")

        def two_sent_two_waiting(rows: list) -> bool:
            # A sent message is recorded just after the transport took it: wait for the rows too.
            sent = [r for r in rows if r.outcome == "sent"]
            waiting = [r for r in rows if r.status == "queued" and r.last_error == "mail_rate"]
            return len(smtp.sink.messages) == 2 and len(sent) == 2 and len(waiting) == 2

        # outbox_until moves the fake clock, not the cap's real-time window: the two over the
        # cap keep waiting, and are never turned into failures or dead letters.
        rows = await app.outbox_until(two_sent_two_waiting)
        waiting = [r for r in rows if r.status == "queued"]
        assert all(r.attempts == 0 for r in waiting)
        assert all(r.available_at > clock.now for r in waiting)
        assert [r.outcome for r in rows if r.status == "done"] == ["sent", "sent"]


async def test_a_claim_whose_worker_died_is_taken_over_after_the_lease(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    settings = make_settings(tmp_path, **backend_settings, smtp_url=smtp.url, embedded_worker=False)
    async with serve(settings, clock, smtp) as app:
        await app.create_user("orphan@example.com")
        await app.request_reset("orphan@example.com")
        # A worker claims the row and dies before it sends: its claim is all that is left.
        async with app.runtime.store.tx() as tx:
            [claimed] = await tx.outbox.claim(
                clock.now, clock.now + timedelta(seconds=settings.worker_lease), 16
            )
        survivor = app.runtime.worker()
        assert await survivor.run_once() == 0  # leased to the dead worker: left alone
        clock.advance(settings.worker_lease)
        assert await survivor.run_once() == 0  # the lease runs to its end …
        clock.advance(1)
        assert await survivor.run_once() == 1  # … and then the row is taken over
        [received] = await smtp.sink.wait_for(1)
        assert received.message["Message-ID"] == f"<{claimed.id.hex}@localhost>"
        async with app.runtime.store.tx() as tx:
            [row] = await tx.outbox.listing()
        assert (row.status, row.outcome, row.attempts) == ("done", "sent", 2)


async def test_operator_templates_override_the_shipped_ones(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, backend_settings: dict[str, Any]
) -> None:
    custom = tmp_path / "templates"
    custom.mkdir()
    (custom / "password_reset.subject.txt").write_text("Acme: reset your password\n")
    (custom / "password_reset.txt").write_text(
        "Acme support. Open {{ link }} within {{ ttl_minutes }} minutes.\n"
    )
    settings = make_settings(tmp_path, **backend_settings, smtp_url=smtp.url, templates_dir=custom)
    async with serve(settings, clock, smtp) as app:
        await app.create_user("brand@example.com")
        link, _ = await app.reset_link("brand@example.com")
        [received] = smtp.sink.to("brand@example.com")
        assert received.message["Subject"] == "Acme: reset your password"
        assert received.text().startswith("Acme support. Open " + link + " within 30 minutes.")
        assert link in received.html()  # templates not overridden still come from the package
