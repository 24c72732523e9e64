"""Webhooks: what happened to an account, told to the application's endpoints.

An account event (`Event`) is written to the outbox in the transaction of the change that
caused it — one row per endpoint that subscribed to its type (`Webhooks.emit`) — so a
committed change always has its events, and a change rolled back has none. The delivery worker
posts each row to its endpoint, signed by the Standard Webhooks scheme (`mail.webhooks`), with
the same `webhook-id` (the row's id) on every attempt.

A row's kind is `webhook:<endpoint name>` and its account is the row's `user_id`: the outbox
does not hand out a webhook row while an older one of the same kind and account waits
(`Outbox.claim`), so one endpoint receives one account's events in the order they were
recorded, even across an outage of the endpoint.

Payloads hold ids and facts — never a token, a password, a hash or a code.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from chaser_auth.store.repositories import WEBHOOK_PREFIX, new_outbox_row
from chaser_auth.store.transactions import Tx

ACCOUNT_CREATED = "account.created"
EMAIL_VERIFIED = "account.email_verified"
RESET_REQUESTED = "account.password_reset_requested"
PASSWORD_RESET = "account.password_reset"  # noqa: S105 - an event type, not a secret
PASSWORD_CHANGED = "account.password_changed"  # noqa: S105 - an event type, not a secret
SESSION_ENDED = "session.ended"
ACCOUNT_DISABLED = "account.disabled"
ACCOUNT_ENABLED = "account.enabled"
ACCOUNT_DELETED = "account.deleted"
EVENT_TYPES = (
    ACCOUNT_CREATED,
    EMAIL_VERIFIED,
    RESET_REQUESTED,
    PASSWORD_RESET,
    PASSWORD_CHANGED,
    SESSION_ENDED,
    ACCOUNT_DISABLED,
    ACCOUNT_ENABLED,
    ACCOUNT_DELETED,
)


@dataclass(frozen=True)
class Event:
    """One account event: its type, the account, and the facts of `data` (ids, flags, counts;
    `user_id` is added to it)."""

    type: str
    user_id: uuid.UUID
    data: dict[str, Any] = field(default_factory=dict)


def stamp(at: datetime) -> str:
    """An instant as the payloads write it: UTC, ISO 8601, microseconds, `Z`."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Subscription:
    """An endpoint, as the domain sees it: its name and the event types it wants."""

    name: str
    events: frozenset[str]


class Webhooks:
    """The endpoints configured (CHASER_AUTH_WEBHOOKS), and the one way to emit events."""

    def __init__(self, subscriptions: Iterable[Subscription] = ()) -> None:
        self.subscriptions = tuple(subscriptions)

    def __bool__(self) -> bool:
        return bool(self.subscriptions)

    async def emit(self, tx: Tx, now: datetime, events: Sequence[Event]) -> int:
        """Queue `events`, in order, in the caller's transaction: a row for each endpoint that
        wants each one; how many rows.

        An account's events are stamped in the order they are emitted: each after the
        account's newest webhook row (a microsecond later if the clock says otherwise), with
        the account's row locked meanwhile, so two changes of one account cannot stamp at
        once. Lock the account before anything else a change locks, or emit first: the
        account, then its sessions and links, is the order every change takes."""
        wanted = [e for e in events if any(e.type in s.events for s in self.subscriptions)]
        if not wanted:
            return 0
        accounts = sorted({event.user_id for event in wanted})
        for user_id in accounts:  # in id order, as every other taker of several
            await tx.users.lock(user_id)
        latest = await tx.outbox.latest_webhooks(accounts)
        rows = []
        for event in wanted:
            previous = latest.get(event.user_id)
            at = now if previous is None or previous < now else previous + timedelta(microseconds=1)
            latest[event.user_id] = at
            payload = {
                "type": event.type,
                "timestamp": stamp(at),
                "data": {"user_id": str(event.user_id), **event.data},
            }
            for endpoint in self.subscriptions:
                if event.type in endpoint.events:
                    rows.append(
                        new_outbox_row(
                            WEBHOOK_PREFIX + endpoint.name,
                            at,
                            payload=payload,
                            user_id=event.user_id,
                        )
                    )
        if rows:
            await tx.outbox.add_many(rows)
        return len(rows)


NO_WEBHOOKS = Webhooks()
