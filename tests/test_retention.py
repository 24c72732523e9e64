"""Retention: the worker's hourly chores (`Housekeeping.run`) keep what a flood leaves
behind bounded. Delivered mail is kept for CHASER_AUTH_OUTBOX_RETENTION_HOURS, dead letters
until an operator handles them, account events for CHASER_AUTH_AUDIT_RETENTION_DAYS, and what
names no account — a request for an unknown address, a confirm with an unknown token — for
CHASER_AUTH_UNMATCHED_RETENTION_HOURS only. The clock is the app's injected one."""

from __future__ import annotations

from chaser_auth.domain.housekeeping import PURGE_CHUNK
from tests.conftest import EVERY_BACKEND, Served

BACKENDS = EVERY_BACKEND
HOUR = 3600


async def outbox_state(app: Served) -> dict[str, tuple[str, str | None]]:
    """Each outbox row's (status, outcome), by what the row was for."""
    async with app.runtime.store.tx() as tx:
        rows = await tx.outbox.listing()
    return {str(row.id): (row.status, row.outcome) for row in rows}


async def audit_state(app: Served) -> list[tuple[str, str | None]]:
    """Every audit event as (event, account id), oldest first."""
    async with app.runtime.store.tx() as tx:
        events = await tx.audit.listing(limit=100_000)
    return [(event.event, str(event.user_id) if event.user_id else None) for event in events]


def ordered(events: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    return sorted(events, key=lambda e: (e[0], e[1] or ""))


async def test_housekeeping_keeps_delivered_mail_for_its_retention_and_dead_letters(
    app: Served,
) -> None:
    assert app.smtp is not None
    settings = app.settings
    assert settings.outbox_retention_hours == 168  # the default: a week
    await app.create_user("kept@example.com")
    await app.create_user("bounced@example.com")

    app.smtp.sink.fail_with = "550 5.1.1 mailbox unavailable"
    await app.request_reset("bounced@example.com")
    await app.settle()
    app.smtp.sink.fail_with = None
    await app.reset_link("kept@example.com")
    await app.settle()
    first = await outbox_state(app)
    assert sorted(first.values()) == [("dead", None), ("done", "sent")]

    # A newer delivered row, half a retention later.
    app.clock.advance(settings.outbox_retention_hours * HOUR // 2)
    await app.reset_link("kept@example.com")
    await app.settle()
    both = await outbox_state(app)
    [newer] = set(both) - set(first)

    # At the retention to the second the first row stays; a second past it, it goes.
    app.clock.advance(settings.outbox_retention_hours * HOUR // 2)
    await app.runtime.housekeeping.run()
    assert await outbox_state(app) == both
    app.clock.advance(1)
    await app.runtime.housekeeping.run()
    left = await outbox_state(app)
    assert sorted(left.values()) == [("dead", None), ("done", "sent")]
    assert left[newer] == ("done", "sent")

    # Dead letters wait for an operator however old they are; the newer row goes in its turn.
    app.clock.advance(365 * 24 * HOUR)
    await app.runtime.housekeeping.run()
    assert sorted((await outbox_state(app)).values()) == [("dead", None)]


async def test_housekeeping_drops_what_names_no_account_after_the_short_retention(
    app: Served,
) -> None:
    settings = app.settings
    assert settings.unmatched_retention_hours == 24  # the default
    assert settings.audit_retention_days == 90
    user = await app.create_user("owner@example.com")
    await app.reset_link("owner@example.com")
    for _ in range(3):
        await app.request_reset("nobody@example.com")
    bogus = await app.client.post(
        "/auth/password-reset/confirm", json={"token": "A" * 43, "password": "x" * 20}
    )
    assert bogus.status_code == 400
    await app.settle()

    outbox = await outbox_state(app)
    assert sorted(outbox.values()) == [("done", "no_account")] * 3 + [("done", "sent")]
    audit = await audit_state(app)
    unmatched: list[tuple[str, str | None]] = [
        ("reset_requested", None),
        ("reset_requested", None),
        ("reset_requested", None),
        ("reset_confirm_failed", None),
    ]
    named: list[tuple[str, str | None]] = [
        ("account_created", user),
        ("reset_requested", user),
        ("reset_token_issued", user),
        ("mail_sent", user),
    ]
    assert ordered(audit) == ordered(unmatched + named)

    # Kept for the short retention to the second, and gone a second after it.
    app.clock.advance(settings.unmatched_retention_hours * HOUR)
    await app.runtime.housekeeping.run()
    assert await outbox_state(app) == outbox
    assert await audit_state(app) == audit
    app.clock.advance(1)
    await app.runtime.housekeeping.run()
    assert sorted((await outbox_state(app)).values()) == [("done", "sent")]
    assert ordered(await audit_state(app)) == ordered(named)

    # Account events stay for the full audit retention; then they go too.
    app.clock.advance((settings.audit_retention_days - 2) * 24 * HOUR)
    await app.runtime.housekeeping.run()
    assert ordered(await audit_state(app)) == ordered(named)
    app.clock.advance(2 * 24 * HOUR)
    await app.runtime.housekeeping.run()
    assert await audit_state(app) == []


async def test_housekeeping_purges_a_backlog_larger_than_one_chunk(app: Served) -> None:
    """The chores delete in chunks (a transaction each); a backlog of several chunks goes
    whole, and what is young enough stays."""
    rows = 2 * PURGE_CHUNK + 7
    async with app.runtime.store.tx() as tx:
        await tx.audit.record_many(
            [
                {
                    "at": app.clock(),
                    "event": "reset_requested",
                    "user_id": None,
                    "subject": None,
                    "detail": None,
                }
                for _ in range(rows)
            ]
        )
    app.clock.advance(app.settings.unmatched_retention_hours * HOUR + 1)
    await app.request_reset("young@example.com")
    await app.settle()
    assert await app.runtime.housekeeping.audit_retention() == rows
    assert await audit_state(app) == [("reset_requested", None)]


async def test_a_sign_up_nobody_confirms_leaves_when_its_link_expires(app: Served) -> None:
    ttl = app.settings.verify_token_ttl
    await app.create_user("verified@example.com")
    for email in ("ghost@example.com", "late@example.com"):
        sign_up = {"email": email, "password": "correct horse battery staple 7"}
        assert (await app.client.post("/auth/register", json=sign_up)).status_code == 202
    await app.settle()

    # Signed up again half a link lifetime later: the newest sign-up's link is what counts.
    app.clock.advance(ttl // 2)
    sign_up = {"email": "late@example.com", "password": "a much better passphrase, 2026"}
    assert (await app.client.post("/auth/register", json=sign_up)).status_code == 202
    await app.settle()

    async def emails() -> set[str]:
        return {user.email for user in await app.runtime.accounts.listing()}

    app.clock.advance(ttl - ttl // 2)
    await app.runtime.housekeeping.run()
    assert await emails() == {"verified@example.com", "ghost@example.com", "late@example.com"}
    app.clock.advance(1)
    await app.runtime.housekeeping.run()
    assert await emails() == {"verified@example.com", "late@example.com"}
    app.clock.advance(ttl // 2)
    await app.runtime.housekeeping.run()
    assert await emails() == {"verified@example.com"}

    # The address is free again: a new sign-up makes a new account with a working link.
    sign_up = {"email": "ghost@example.com", "password": "correct horse battery staple 7"}
    assert (await app.client.post("/auth/register", json=sign_up)).status_code == 202
    await app.settle()
    assert await emails() == {"verified@example.com", "ghost@example.com"}


async def test_operator_events_that_name_no_account_keep_the_full_retention(
    app: Served,
) -> None:
    """docs/operations.md ("The audit trail"): an admin API call or refusal that names no
    account is an operator's act, kept as long as account events — not a flood's leftovers."""
    admin = app.runtime.admin
    await admin.record_call("support", "admin-list-dead-letters", 200, client="127.0.0.1")
    await admin.record_refused("admin-list-accounts", "unknown_key", client="127.0.0.1")
    await app.request_reset("nobody@example.com")  # unmatched: the short retention
    await app.settle()
    operator = [("admin_call", None), ("admin_refused", None)]
    assert ordered(await audit_state(app)) == ordered([*operator, ("reset_requested", None)])

    app.clock.advance(app.settings.unmatched_retention_hours * HOUR + 1)
    await app.runtime.housekeeping.audit_retention()
    assert ordered(await audit_state(app)) == operator

    app.clock.advance(app.settings.audit_retention_days * 24 * HOUR)
    await app.runtime.housekeeping.audit_retention()
    assert await audit_state(app) == []
