"""The schema, as SQLAlchemy 2 typed tables. Alembic's migrations are the source of truth for
the database; these classes must match them (a test compares the two)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, TypeDecorator, Uuid
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python on every engine (SQLite keeps no zone, so we store UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    # none_as_null: a cleared payload is SQL NULL, not the JSON text "null".
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON(none_as_null=True),
    }


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_active: Mapped[bool]
    email_verified: Mapped[bool]
    created_at: Mapped[datetime]
    password_changed_at: Mapped[datetime | None]
    # Goes up with every change of what proves who someone is (password set, reset or
    # changed; disabled; enabled): a session is accepted only while it carries this value.
    credential_version: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    # The language its mail is written in (a locale name, `pt_BR`): the sign-up's. NULL: the
    # default language.
    locale: Mapped[str | None] = mapped_column(String(35), default=None)


class Session(Base):
    __tablename__ = "sessions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    credential_version: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    client_description: Mapped[str | None] = mapped_column(String(100))  # "Firefox 128 on …"
    client_place: Mapped[str | None] = mapped_column(String(64))  # last used from: a network


class LinkToken:
    """The columns of a token sent in a link (reset, email verification): only its digest is
    stored, and it dies when used, revoked or expired. `outbox_id` is the row whose mail
    carries it (the token is derived from that id, so a retried send carries the same link).

    A mailed link also has a one-time code: `code_digest` is its keyed digest (NULL when the
    link has no code, or once the code is used); the tries at it are counted in `limit_hits`
    (scope `<purpose>-code`, key the link's id)."""

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
    outbox_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, unique=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    code_digest: Mapped[str | None] = mapped_column(String(64))


class ResetToken(LinkToken, Base):
    __tablename__ = "reset_tokens"


class VerifyToken(LinkToken, Base):
    __tablename__ = "verify_tokens"


class EmailChangeToken(LinkToken, Base):
    """The link mailed to a new address to confirm moving the account there."""

    __tablename__ = "email_change_tokens"
    new_email: Mapped[str | None] = mapped_column(String(320))


class EmailUndoToken(LinkToken, Base):
    """The link mailed to the old address after a change, to move the account back."""

    __tablename__ = "email_undo_tokens"
    old_email: Mapped[str | None] = mapped_column(String(320))


class OutboxMessage(Base):
    """The durable queue between the API and the delivery worker.

    A row is a piece of mail work: a reset request still to be resolved (payload holds the
    string the client sent, cleared once handled), or a notice to an account; or a webhook
    event for one endpoint (kind `webhook:<name>`, payload the event, cleared once delivered).
    It never holds a token or a rendered message.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "status", "available_at"),
        # a webhook row's older siblings (same endpoint and account), see `Outbox.claim`
        Index("ix_outbox_account_kind", "user_id", "kind", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any] | None]
    user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    available_at: Mapped[datetime]
    locked_until: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(String(200))


class LimitHit(Base):
    """One counted event of a limit kept in the database (the per-address mail limit and the
    tries at one address's codes when no Redis is configured; always the tries at each code):
    it survives restarts and is shared by every process on the file."""

    __tablename__ = "limit_hits"
    __table_args__ = (Index("ix_limit_hits_scope_key_at", "scope", "key", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(index=True)
    event: Mapped[str] = mapped_column(String(40))
    user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    subject: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any] | None]
    client: Mapped[str | None] = mapped_column(String(64))  # as the per-client limits count it
