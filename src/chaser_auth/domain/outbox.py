"""What the outbox means to the services that fill it and to the worker that empties it.

A row is queued under one of the kinds below (or `webhook:<endpoint>`, an account event for
one endpoint: `webhooks`) — by the request path (`RESET_REQUEST`, `REGISTER`, `VERIFY_RESEND`),
by a credential change (`PASSWORD_CHANGED`) or by an operator's invitation (`INVITATION`). The
delivery worker asks the service that owns the kind what the row becomes: a `Letter` to send,
or a `Skip` with its outcome; either carries the audit `Note`s to record with it, in the
transaction that finishes the row. Mail to one address is budgeted (`AddressLimit`),
whichever kind it is.

Recovery, registration and accounts speak this vocabulary without importing one another.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from chaser_auth.domain.devices import Device
from chaser_auth.domain.webhooks import Event

RESET_REQUEST = "password_reset_request"
PASSWORD_CHANGED = "password_changed"  # noqa: S105 - an outbox kind, not a secret
REGISTER = "register"
INVITATION = "invitation"
VERIFY_RESEND = "verify_resend"
NEW_SIGN_IN = "new_sign_in"
EMAIL_CHANGE = "email_change"  # a confirmation link to the new address
EMAIL_CHANGED = "email_changed"  # the notice, with an undo link, to the old one


def device_payload(device: Device | None) -> dict[str, Any] | None:
    """What a notice says about the browser that acted: its description and network."""
    if device is None:
        return None
    return {"device": device.description, "place": device.place}


@dataclass(frozen=True)
class Note:
    """An audit event the worker records in the same transaction that finishes the row, so a
    request that needs no mail costs one commit, not one per event."""

    event: str
    user_id: uuid.UUID | None = None
    subject: str | None = None
    client: str | None = None  # the client address of the request, as the limits key it

    def event_at(self, at: datetime, detail: dict[str, Any] | None = None) -> dict[str, Any]:
        """The audit row to insert (`Audit.record_many`)."""
        return {
            "at": at,
            "event": self.event,
            "user_id": self.user_id,
            "subject": self.subject,
            "detail": detail,
            "client": self.client,
        }


@dataclass(frozen=True)
class Letter:
    """What the worker should send: a template, the stored address, the template's context,
    and the language to write it in (the account's, or for an address without one the
    request's; None: the default)."""

    template: str
    to: str
    context: dict[str, Any] = field(default_factory=dict)
    notes: tuple[Note, ...] = ()
    locale: str | None = None


@dataclass(frozen=True)
class Skip:
    """Nothing to send; `outcome` is recorded on the outbox row, and `events` (account events,
    `webhooks`) are emitted in the same transaction."""

    outcome: str
    notes: tuple[Note, ...] = ()
    events: tuple[Event, ...] = ()


def device_context(job: Any) -> dict[str, str]:
    """A notice's template context from its row's `device_payload`: `device` and `place`,
    each empty when not known."""
    payload = getattr(job, "payload", None) or {}
    return {key: str(payload.get(key) or "") for key in ("device", "place")}


class AddressLimit(Protocol):
    """The per-address limit on mail, as the domain sees it: may one more go to each of
    `subjects` (in order; a subject may repeat, and each allowed one counts)?"""

    async def allow_many(self, subjects: Sequence[str]) -> list[bool]: ...
