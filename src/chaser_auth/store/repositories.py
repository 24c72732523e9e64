"""The store's queries: a repository per table, each asking one session (`Db`) for rows or
telling it what changed. Where the SQL lives; the transactions these run in, and how they take
turns, are `transactions`'."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar, cast

from sqlalchemy import (
    CursorResult,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import ScalarResult
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.selectable import TypedReturnsRows

from chaser_auth.store.notify import CHANNEL
from chaser_auth.store.tables import (
    AuditEvent,
    LimitHit,
    LinkToken,
    OutboxMessage,
    Session,
    User,
)

QUEUED, DONE, DEAD = "queued", "done", "dead"
# The kind of a webhook row is this and the endpoint's name: one account's rows of one kind are
# handed out oldest first, one at a time (`Outbox.claim`).
WEBHOOK_PREFIX = "webhook:"
# Audit events of operators that may name no account (the admin API's calls and refusals, a
# dead letter retried): kept for the audit retention, not the shorter unmatched one.
OPERATOR_EVENTS = ("admin_call", "admin_refused", "dead_letter_retried")
T = TypeVar("T", bound=LinkToken)
R = TypeVar("R")


class Db(Protocol):
    """What the repositories ask of a session: `AsyncSession`'s surface, which `InlineSession`
    also offers."""

    async def execute(self, statement: Executable, params: Any = None) -> Any: ...

    async def scalars(
        self, statement: TypedReturnsRows[R], params: Any = None
    ) -> ScalarResult[R]: ...

    async def scalar(self, statement: TypedReturnsRows[R], params: Any = None) -> R | None: ...

    async def get(self, entity: type[R], ident: Any) -> R | None: ...

    async def flush(self) -> None: ...

    def add(self, instance: object) -> None: ...

    def get_bind(self) -> Any: ...


def _table(entity: type[Any]) -> Table:
    """The Core table behind a mapped class: many-row inserts go through it, as plain
    executemany, skipping the ORM's bulk-insert bookkeeping (no objects are wanted back)."""
    return cast(Table, entity.__table__)


def _rowcount(result: Any) -> int:
    return cast(CursorResult[Any], result).rowcount


@dataclass
class Users:
    db: Db

    async def by_key(self, email_key: str) -> User | None:
        return await self.db.scalar(select(User).where(User.email_key == email_key))

    async def by_keys(self, email_keys: set[str]) -> dict[str, User]:
        """The accounts among `email_keys`, by key, in one query."""
        if not email_keys:
            return {}
        found = await self.db.scalars(select(User).where(User.email_key.in_(email_keys)))
        return {user.email_key: user for user in found}

    async def get(self, user_id: uuid.UUID) -> User | None:
        return await self.db.get(User, user_id)

    async def add(self, user: User) -> None:
        self.db.add(user)
        await self.db.flush()

    async def lock(self, user_id: uuid.UUID) -> User | None:
        """The account as committed now, its row locked until this transaction ends
        (`FOR UPDATE` on PostgreSQL; SQLite's one writer already excludes the rest): what the
        caller decides from it cannot be overtaken by another credential change."""
        return await self.db.scalar(
            select(User)
            .where(User.id == user_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )

    async def lock_key(self, email_key: str) -> User | None:
        """`lock`, by address key: the account with this key, if any, its row locked."""
        return await self.db.scalar(
            select(User)
            .where(User.email_key == email_key)
            .with_for_update()
            .execution_options(populate_existing=True)
        )

    async def set_password(
        self,
        user_id: uuid.UUID,
        password_hash: str,
        now: datetime,
        *,
        expected_version: int | None = None,
    ) -> int | None:
        """Write a new password and move the credential version on; the new version. With
        `expected_version`, only if the account still has that version (compare-and-set: a
        change that verified an older credential cannot overwrite a newer one) — else None."""
        condition = [User.id == user_id]
        if expected_version is not None:
            condition.append(User.credential_version == expected_version)
        return await self._bump(
            condition,
            password_hash=password_hash,
            password_changed_at=now,
            email_verified=True,
        )

    async def set_active(self, user_id: uuid.UUID, active: bool) -> None:
        """Enable or disable; either way the credential version moves on, so a session opened
        by a login that was in flight meanwhile is refused."""
        await self._bump([User.id == user_id], is_active=active)

    async def replace_pending(
        self, user_id: uuid.UUID, password_hash: str, now: datetime, locale: str | None = None
    ) -> None:
        """A new sign-up of an account not yet verified: its password, creation time and
        language are the newest sign-up's."""
        await self._bump(
            [User.id == user_id], password_hash=password_hash, created_at=now, locale=locale
        )

    async def _bump(self, condition: list[Any], **values: Any) -> int | None:
        result = await self.db.execute(
            update(User)
            .where(*condition)
            .values(credential_version=User.credential_version + 1, **values)
            .returning(User.credential_version)
        )
        version: int | None = result.scalar_one_or_none()
        return version

    async def change_email(self, user_id: uuid.UUID, email: str, email_key: str) -> None:
        """Move the account to another address, verified (its mailbox confirmed the move); the
        credential version moves on, so a login in flight on the old address opens nothing."""
        await self._bump(
            [User.id == user_id], email=email, email_key=email_key, email_verified=True
        )

    async def mark_verified(self, user_id: uuid.UUID) -> None:
        await self.db.execute(update(User).where(User.id == user_id).values(email_verified=True))

    async def delete(self, user_id: uuid.UUID) -> None:
        await self.db.execute(delete(User).where(User.id == user_id))

    async def listing(self, *, offset: int = 0, limit: int | None = None) -> Sequence[User]:
        """Accounts oldest first (ties by address, then id, so pages never overlap)."""
        query = select(User).order_by(User.created_at, User.email, User.id).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        return (await self.db.scalars(query)).all()

    async def unverified_before(self, before: datetime, limit: int) -> list[uuid.UUID]:
        """Up to `limit` accounts never verified whose newest sign-up is from before `before`,
        their rows locked (those `purge_unverified` would delete), in id order."""
        table = _table(User)
        found = await self.db.scalars(
            select(table.c.id)
            .where(table.c.email_verified.is_(False), table.c.created_at < before)
            .order_by(table.c.id)
            .limit(limit)
            .with_for_update()
        )
        return list(found)

    async def delete_many(self, user_ids: Sequence[uuid.UUID]) -> int:
        table = _table(User)
        return _rowcount(await self.db.execute(delete(table).where(table.c.id.in_(user_ids))))

    async def purge_unverified(self, before: datetime, limit: int) -> int:
        """Delete up to `limit` accounts never verified whose newest sign-up is from before
        `before` (their sessions and links go with them); how many went."""
        table = _table(User)
        doomed = (
            select(table.c.id)
            .where(table.c.email_verified.is_(False), table.c.created_at < before)
            .limit(limit)
        )
        return _rowcount(await self.db.execute(delete(table).where(table.c.id.in_(doomed))))

    async def replace_hash(self, user_id: uuid.UUID, password_hash: str) -> None:
        await self.db.execute(
            update(User).where(User.id == user_id).values(password_hash=password_hash)
        )


@dataclass
class Sessions:
    db: Db

    async def add(self, session: Session) -> None:
        self.db.add(session)
        await self.db.flush()

    async def by_digest(self, token_digest: str) -> Session | None:
        return await self.db.scalar(select(Session).where(Session.token_digest == token_digest))

    async def touch(self, session_id: uuid.UUID, now: datetime, place: str | None) -> None:
        """Used now, from `place` (a network; None leaves the one recorded)."""
        values: dict[str, Any] = {"last_seen_at": now}
        if place is not None:
            values["client_place"] = place
        await self.db.execute(update(Session).where(Session.id == session_id).values(**values))

    async def get(self, session_id: uuid.UUID) -> Session | None:
        return await self.db.get(Session, session_id)

    async def revoke(self, session_id: uuid.UUID, now: datetime) -> bool:
        """Revoke one session; True if this call revoked it."""
        result = await self.db.execute(
            update(Session)
            .where(Session.id == session_id, Session.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return _rowcount(result) == 1

    async def open_for(self, user: User, now: datetime) -> Sequence[Session]:
        """Sessions not revoked, on the account's current credential and within their absolute
        lifetime (idle ones are filtered by the domain, which knows the idle timeout)."""
        query = (
            select(Session)
            .where(
                Session.user_id == user.id,
                Session.credential_version == user.credential_version,
                Session.revoked_at.is_(None),
                Session.expires_at >= now,
            )
            .order_by(Session.last_seen_at.desc())
        )
        return (await self.db.scalars(query)).all()

    async def revoke_all(self, user_id: uuid.UUID, now: datetime) -> int:
        result = await self.db.execute(
            update(Session)
            .where(Session.user_id == user_id, Session.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return _rowcount(result)

    async def revoke_each(self, user_id: uuid.UUID, now: datetime) -> list[uuid.UUID]:
        """`revoke_all`, naming the sessions it revoked (oldest first). Run it where the
        account's row is locked, or no new session can start meanwhile."""
        ids = list(
            await self.db.scalars(
                select(Session.id)
                .where(Session.user_id == user_id, Session.revoked_at.is_(None))
                .order_by(Session.created_at, Session.id)
            )
        )
        if ids:
            await self.db.execute(update(Session).where(Session.id.in_(ids)).values(revoked_at=now))
        return ids


@dataclass
class LinkTokens(Generic[T]):
    """Reset or verification tokens: the same rules, one table each."""

    db: Db
    model: type[T]

    async def by_digest(self, token_digest: str) -> T | None:
        return await self.db.scalar(
            select(self.model).where(self.model.token_digest == token_digest)
        )

    async def by_outbox(self, outbox_id: uuid.UUID) -> T | None:
        return await self.db.scalar(select(self.model).where(self.model.outbox_id == outbox_id))

    async def live_among(self, user_ids: set[uuid.UUID], now: datetime) -> set[uuid.UUID]:
        """Those of these accounts that hold a token still usable at `now` (unused, unrevoked,
        unexpired — the conditions of `consume`), in one query."""
        if not user_ids:
            return set()
        table = _table(self.model)
        found = await self.db.scalars(
            select(table.c.user_id)
            .where(
                table.c.user_id.in_(user_ids),
                table.c.used_at.is_(None),
                table.c.revoked_at.is_(None),
                table.c.expires_at >= now,
            )
            .distinct()
        )
        return set(found)

    async def live_code_of(self, email_key: str, now: datetime) -> T | None:
        """The link of the active account with this address key whose one-time code may be
        tried now: the link usable (the conditions of `consume`) and its code not used. One
        query, whether or not the address has an account."""
        model, table = self.model, _table(self.model)
        users = _table(User)
        return await self.db.scalar(
            select(model)
            .join(users, users.c.id == table.c.user_id)
            .where(
                users.c.email_key == email_key,
                users.c.is_active.is_(True),
                table.c.used_at.is_(None),
                table.c.revoked_at.is_(None),
                table.c.expires_at >= now,
                table.c.code_digest.is_not(None),
            )
            .order_by(table.c.created_at.desc())
            .limit(1)
        )

    async def use_code(self, link_id: uuid.UUID, digest: str, now: datetime) -> bool:
        """The code is used: its digest goes; True for the one caller that took it, while the
        link is still usable."""
        table = _table(self.model)
        result = await self.db.execute(
            update(table)
            .where(
                table.c.id == link_id,
                table.c.code_digest == digest,
                table.c.used_at.is_(None),
                table.c.revoked_at.is_(None),
                table.c.expires_at >= now,
            )
            .values(code_digest=None)
        )
        return _rowcount(result) == 1

    async def consume(self, token_id: uuid.UUID, now: datetime) -> bool:
        """Mark the token used if, at this instant, it still may be; True for the one winner."""
        model = self.model
        result = await self.db.execute(
            update(model)
            .where(
                model.id == token_id,
                model.used_at.is_(None),
                model.revoked_at.is_(None),
                model.expires_at >= now,
            )
            .values(used_at=now)
        )
        return _rowcount(result) == 1

    async def revoke_all(self, user_id: uuid.UUID, now: datetime) -> int:
        return await self.revoke_all_of([user_id], now)

    async def revoke_all_of(self, user_ids: Sequence[uuid.UUID], now: datetime) -> int:
        """Revoke every outstanding token of these accounts, in one statement; how many."""
        table = _table(self.model)
        result = await self.db.execute(
            update(table)
            .where(
                table.c.user_id.in_(user_ids),
                table.c.used_at.is_(None),
                table.c.revoked_at.is_(None),
            )
            .values(revoked_at=now)
        )
        return _rowcount(result)

    async def annotate(self, outbox_id: uuid.UUID, **values: Any) -> None:
        """Set further columns (an email-change link's address) of the link of a mailed row."""
        model = self.model
        await self.db.execute(update(model).where(model.outbox_id == outbox_id).values(**values))

    async def add_many(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert tokens given as column values, in one statement."""
        if rows:
            await self.db.execute(insert(_table(self.model)), list(rows))


def new_outbox_row(
    kind: str,
    now: datetime,
    *,
    payload: dict[str, Any] | None = None,
    user_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """A queued outbox row, due now, as the values to insert."""
    return {
        "id": uuid.uuid4(),
        "kind": kind,
        "status": QUEUED,
        "payload": payload,
        "user_id": user_id,
        "attempts": 0,
        "created_at": now,
        "available_at": now,
    }


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed outbox row, as the worker reads it: a plain value, not an ORM object (a round
    claims hundreds, and building ORM instances cost more than the rest of the claim)."""

    id: uuid.UUID
    kind: str
    payload: dict[str, Any] | None
    user_id: uuid.UUID | None
    attempts: int
    created_at: datetime
    available_at: datetime


@dataclass
class Outbox:
    db: Db

    async def enqueue(
        self,
        kind: str,
        now: datetime,
        *,
        payload: dict[str, Any] | None = None,
        user_id: uuid.UUID | None = None,
    ) -> None:
        await self.add_many([new_outbox_row(kind, now, payload=payload, user_id=user_id)])

    async def add_many(self, rows: list[dict[str, Any]]) -> None:
        """Insert rows made by `new_outbox_row`, in one statement."""
        await self.db.execute(insert(_table(OutboxMessage)), rows)
        await self._notify()

    async def _notify(self) -> None:
        # PostgreSQL delivers it at commit, to every worker that LISTENs (store/notify.py);
        # several in one transaction collapse into one.
        if self.db.get_bind().dialect.name == "postgresql":
            await self.db.execute(text(f"NOTIFY {CHANNEL}"))

    async def claim(self, now: datetime, lease_until: datetime, limit: int) -> list[Job]:
        """Take up to `limit` due messages for this worker until `lease_until`, oldest first.

        `FOR UPDATE SKIP LOCKED` lets workers on PostgreSQL claim side by side without waiting
        on each other; SQLite ignores it (BEGIN IMMEDIATE already serialises writers). A claim
        whose worker died is taken over once its lease has run out. One `UPDATE … RETURNING`
        where the database has it (PostgreSQL, SQLite 3.35+), and plain rows, not ORM objects.
        """
        table = _table(OutboxMessage)
        older = table.alias("older")
        # A webhook row waits while an older row of its kind (its endpoint) and account is still
        # queued — due, backing off or in flight — so each endpoint gets an account's events in
        # order. A dead letter does not hold the rows behind it.
        waits = (
            select(older.c.id)
            .where(
                older.c.kind == table.c.kind,
                older.c.user_id == table.c.user_id,
                older.c.status == QUEUED,
                or_(
                    older.c.created_at < table.c.created_at,
                    and_(older.c.created_at == table.c.created_at, older.c.id < table.c.id),
                ),
            )
            .exists()
        )
        due = (
            select(table.c.id)
            .where(
                table.c.status == QUEUED,
                table.c.available_at <= now,
                or_(table.c.locked_until.is_(None), table.c.locked_until < now),
                or_(table.c.kind.not_like(WEBHOOK_PREFIX + "%"), ~waits),
            )
            .order_by(table.c.available_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        take = update(table).values(locked_until=lease_until, attempts=table.c.attempts + 1)
        columns = [table.c[name] for name in Job.__slots__]
        if self.db.get_bind().dialect.update_returning:
            rows = (
                await self.db.execute(take.where(table.c.id.in_(due)).returning(*columns))
            ).all()
        else:  # SQLite before 3.35
            ids = (await self.db.scalars(due)).all()
            if not ids:
                return []
            await self.db.execute(take.where(table.c.id.in_(ids)))
            rows = (await self.db.execute(select(*columns).where(table.c.id.in_(ids)))).all()
        jobs = [Job(*row) for row in rows]
        jobs.sort(key=lambda job: job.available_at)  # RETURNING keeps no order
        return jobs

    async def resolve_many(self, matched: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> None:
        """Requests matched to accounts, as (message id, account id) pairs: forget what the
        clients typed. One executemany."""
        if not matched:
            return
        table = _table(OutboxMessage)
        await self.db.execute(
            update(table)
            .where(table.c.id == bindparam("message_id"))
            .values(user_id=bindparam("account_id"), payload=None),
            [{"message_id": message, "account_id": account} for message, account in matched],
        )

    async def latest_webhooks(self, user_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, datetime]:
        """When the newest webhook row of each of these accounts was queued (for those that
        have one still kept); one query."""
        table = _table(OutboxMessage)
        rows = await self.db.execute(
            select(table.c.user_id, func.max(table.c.created_at))
            .where(table.c.user_id.in_(user_ids), table.c.kind.like(WEBHOOK_PREFIX + "%"))
            .group_by(table.c.user_id)
        )
        return {user_id: at for user_id, at in rows if at is not None}

    async def accounts_of(self, message_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
        """The account each of these rows was matched to, for those that were; one query."""
        table = _table(OutboxMessage)
        rows = await self.db.execute(
            select(table.c.id, table.c.user_id).where(
                table.c.id.in_(message_ids), table.c.user_id.is_not(None)
            )
        )
        return {message: account for message, account in rows}

    async def lock(self, message_ids: Sequence[uuid.UUID]) -> None:
        """Lock these rows for this transaction, in id order (a no-op on SQLite, whose writers
        are serialised anyway)."""
        # `renew` takes its rows in id order too: two transactions that lock the same rows in
        # different orders deadlock on PostgreSQL, and a sent message whose outcome is lost
        # to a deadlock is sent again after its lease.
        table = _table(OutboxMessage)
        await self.db.execute(
            select(table.c.id)
            .where(table.c.id.in_(message_ids))
            .order_by(table.c.id)
            .with_for_update()
        )

    async def finish_many(
        self, message_ids: Sequence[uuid.UUID], outcome: str, now: datetime
    ) -> None:
        """Mark rows done with one `outcome`, in one statement (on the Core table: the ORM's
        bulk-update bookkeeping cost more than the statement)."""
        table = _table(OutboxMessage)
        await self.db.execute(
            update(table)
            .where(table.c.id.in_(message_ids))
            .values(
                status=DONE,
                outcome=outcome,
                finished_at=now,
                locked_until=None,
                payload=None,
                last_error=None,
            )
        )

    async def renew(
        self, held: Sequence[tuple[uuid.UUID, datetime]], until: datetime
    ) -> list[uuid.UUID]:
        """Extend to `until` the leases of rows a worker still holds, each given with the lease
        it holds; the ids renewed. A row that was finished, or whose lease ran out and another
        worker claimed it (a different lease), is left as it is."""
        renewed = []
        for message_id, lease in sorted(held):  # in id order, as `lock` takes them
            result = await self.db.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.id == message_id,
                    OutboxMessage.status == QUEUED,
                    OutboxMessage.locked_until == lease,
                )
                .values(locked_until=until)
            )
            if _rowcount(result) == 1:
                renewed.append(message_id)
        return renewed

    async def retry_later(
        self, message_id: uuid.UUID, at: datetime, error: str, *, refund: bool = False
    ) -> None:
        """Put a claimed row back for `at`; `refund` gives back the attempt its claim counted."""
        await self.db.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == message_id)
            .values(
                available_at=at,
                locked_until=None,
                last_error=error,
                attempts=OutboxMessage.attempts - (1 if refund else 0),
            )
        )

    async def bury(self, message_id: uuid.UUID, now: datetime, error: str) -> None:
        await self.db.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == message_id)
            .values(status=DEAD, finished_at=now, locked_until=None, last_error=error)
        )

    async def revive(self, message_id: uuid.UUID, now: datetime) -> bool:
        result = await self.db.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == message_id, OutboxMessage.status == DEAD)
            .values(status=QUEUED, attempts=0, available_at=now, finished_at=None)
        )
        revived = _rowcount(result) == 1
        if revived:
            await self._notify()
        return revived

    async def purge(self) -> int:
        result = await self.db.execute(
            delete(OutboxMessage).where(OutboxMessage.status.in_((DONE, DEAD)))
        )
        return _rowcount(result)

    async def purge_done(self, before: datetime, unmatched_before: datetime, limit: int) -> int:
        """Delete up to `limit` done rows finished before `before` — or, for rows that name no
        account (a request that matched none), before `unmatched_before`; how many went.
        Queued rows and dead letters stay."""
        table = _table(OutboxMessage)
        doomed = (
            select(table.c.id)
            .where(
                table.c.status == DONE,
                or_(
                    table.c.finished_at < before,
                    and_(table.c.user_id.is_(None), table.c.finished_at < unmatched_before),
                ),
            )
            .limit(limit)
        )
        return _rowcount(await self.db.execute(delete(table).where(table.c.id.in_(doomed))))

    async def listing(self, status: str | None = None) -> Sequence[OutboxMessage]:
        query = select(OutboxMessage).order_by(OutboxMessage.created_at)
        if status is not None:
            query = query.where(OutboxMessage.status == status)
        return (await self.db.scalars(query)).all()

    async def stats(self) -> tuple[int, datetime | None, int]:
        """(rows waiting, when the oldest waiting row was queued, dead letters)."""
        waiting = await self.db.execute(
            select(func.count(), func.min(OutboxMessage.created_at)).where(
                OutboxMessage.status == QUEUED
            )
        )
        depth, oldest = waiting.one()
        dead = await self.db.scalar(
            select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status == DEAD)
        )
        return int(depth or 0), oldest, int(dead or 0)


@dataclass
class Audit:
    db: Db

    async def record(
        self,
        event: str,
        now: datetime,
        *,
        user_id: uuid.UUID | None = None,
        subject: str | None = None,
        detail: dict[str, Any] | None = None,
        client: str | None = None,
    ) -> None:
        self.db.add(
            AuditEvent(
                at=now, event=event, user_id=user_id, subject=subject, detail=detail, client=client
            )
        )

    async def record_many(self, events: Sequence[dict[str, Any]]) -> None:
        """Insert many events in one statement; each a dict of `at`, `event`, `user_id`,
        `subject`, `detail`."""
        if events:
            await self.db.execute(insert(_table(AuditEvent)), list(events))

    async def listing(
        self,
        *,
        since: datetime | None = None,
        event: str | None = None,
        user_id: uuid.UUID | None = None,
        limit: int = 100,
    ) -> Sequence[AuditEvent]:
        """The newest `limit` events matching, oldest first."""
        query = select(AuditEvent)
        if since is not None:
            query = query.where(AuditEvent.at >= since)
        if event is not None:
            query = query.where(AuditEvent.event == event)
        if user_id is not None:
            query = query.where(AuditEvent.user_id == user_id)
        newest = (await self.db.scalars(query.order_by(AuditEvent.id.desc()).limit(limit))).all()
        return list(reversed(newest))

    async def purge(self, before: datetime, unmatched_before: datetime, limit: int) -> int:
        """Delete up to `limit` events from before `before` — or, for events that name no
        account, from before `unmatched_before`, except the operators' (`OPERATOR_EVENTS`:
        an admin API call is kept as long as any account's events); how many went."""
        table = _table(AuditEvent)
        unmatched = and_(table.c.user_id.is_(None), table.c.event.not_in(OPERATOR_EVENTS))
        doomed = (
            select(table.c.id)
            .where(  # `at` bounded first, so the index on it narrows the scan
                table.c.at < max(before, unmatched_before),
                or_(table.c.at < before, unmatched),
            )
            .limit(limit)
        )
        return _rowcount(await self.db.execute(delete(table).where(table.c.id.in_(doomed))))


@dataclass
class LimitHits:
    db: Db

    async def take_many(
        self, scope: str, keys: Sequence[str], amount: int, since: datetime, now: datetime
    ) -> list[bool]:
        """For each of `keys` in order (a key may repeat): count one hit if fewer than `amount`
        happened since `since`; True where counted. One count query and one insert for all.

        Run it in a short transaction (its own, or a code exchange's): on SQLite BEGIN
        IMMEDIATE makes count-then-insert atomic; on PostgreSQL advisory locks on the keys do,
        held to the end of the transaction and taken in sorted order so that two workers
        cannot deadlock on them."""
        if not keys:
            return []
        distinct = sorted(set(keys))
        if self.db.get_bind().dialect.name == "postgresql":
            for key in distinct:
                await self.db.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"{scope}:{key}"}
                )
        counted = await self.db.execute(
            select(LimitHit.key, func.count())
            .where(LimitHit.scope == scope, LimitHit.key.in_(distinct), LimitHit.at > since)
            .group_by(LimitHit.key)
        )
        used: dict[str, int] = {key: int(n) for key, n in counted}
        allowed: list[bool] = []
        for key in keys:
            ok = used.get(key, 0) < amount
            if ok:
                used[key] = used.get(key, 0) + 1
            allowed.append(ok)
        hits = [
            {"scope": scope, "key": k, "at": now} for k, ok in zip(keys, allowed, strict=True) if ok
        ]
        if hits:
            await self.db.execute(insert(_table(LimitHit)), hits)
        return allowed

    async def oldest(self, scope: str, key: str, since: datetime) -> datetime | None:
        """When the oldest hit of `key` after `since` happened (it leaves the window first)."""
        return await self.db.scalar(
            select(func.min(LimitHit.at)).where(
                LimitHit.scope == scope, LimitHit.key == key, LimitHit.at > since
            )
        )

    async def purge(self, before: datetime) -> int:
        result = await self.db.execute(delete(LimitHit).where(LimitHit.at < before))
        return _rowcount(result)
