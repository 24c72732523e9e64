"""Links sent by mail — password reset, email verification — issued, checked and resent by one
set of rules, whichever service sends them.

A link carries a token (`tokens`): derived from the outbox row whose mail carries it, so that a
retried send carries the very same link without the outbox ever holding the token, or random
when it is printed rather than mailed. Only the token's digest is stored, one table per
purpose. See `tokens` for the numbered reasons a link stops working; `usable` is the stored
half of them (used, revoked, expired), and each service adds its own about the account.

A mailed link carries a one-time code beside it (`tokens.derive_code`), standing for the same
token: it lives exactly as long as the link (used, revoked, expired — it is checked against the
same row), is used up once redeemed, and dies after `tries` tries. Only its keyed digest is
stored, in the link's row; the tries are counted in `limit_hits` (`redeem_code`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from chaser_auth import metrics
from chaser_auth.domain import tokens
from chaser_auth.domain.outbox import Note
from chaser_auth.store.repositories import Job, LinkTokens
from chaser_auth.store.tables import LinkToken, User
from chaser_auth.store.transactions import Store, Tx

T = TypeVar("T", bound=LinkToken)
_NO_DIGEST = "0" * 64  # compared against when there is no live code: the same work


@dataclass(frozen=True)
class Grant:
    """A link to mint for `user`: for the outbox row `job_id` (None: a printed link), after
    the audit `notes` that led to it."""

    user: User
    job_id: uuid.UUID | None
    notes: tuple[Note, ...] = ()


class Links(Generic[T]):
    """The links of one `purpose`, kept in one table (`table` picks it from a transaction),
    alive for `ttl`, opening `page` with the token in the URL fragment."""

    def __init__(
        self,
        *,
        store: Store,
        secret: bytes,
        purpose: str,
        ttl: timedelta,
        page: str,
        table: Callable[[Tx], LinkTokens[T]],
    ) -> None:
        self.store = store
        self.secret = secret
        self.purpose = purpose
        self.ttl = ttl
        self.page = page
        self.table = table

    def url(self, token: str) -> str:
        return f"{self.page}#token={token}"

    # -- issuing ------------------------------------------------------------------------------

    async def issue(
        self, tx: Tx, grants: Sequence[tuple[uuid.UUID, uuid.UUID | None]], now: datetime
    ) -> list[str]:
        """A token for each (account id, outbox row id) in `grants`, in order, stored with one
        statement per step for all of them.

        A newer link revokes every older one (reason 3 in `tokens`): the accounts' links from
        before, and of an account's grants here all but its last, which are stored revoked. A
        mailed token is derived from its outbox row (a retried send carries the same link), and
        the row is resolved to its account (what the client typed is forgotten); a printed one
        (no row) is random."""
        links = self.table(tx)
        await links.revoke_all_of(sorted({user_id for user_id, _ in grants}), now)
        newest = {user_id: i for i, (user_id, _) in enumerate(grants)}
        minted: list[str] = []
        rows: list[dict[str, Any]] = []
        for i, (user_id, job_id) in enumerate(grants):
            token = tokens.new_token() if job_id is None else self.token_of(job_id)
            minted.append(token)
            link_id = uuid.uuid4()
            rows.append(
                {
                    "id": link_id,
                    "user_id": user_id,
                    "token_digest": tokens.digest(self.secret, token),
                    "outbox_id": job_id,
                    "created_at": now,
                    "expires_at": now + self.ttl,
                    "used_at": None,
                    "revoked_at": None if newest[user_id] == i else now,
                    # a printed link has no code: it is handed over, not typed from a mail
                    "code_digest": None
                    if job_id is None
                    else tokens.code_digest(
                        self.secret, self.purpose, link_id, self.code_of(job_id)
                    ),
                }
            )
        await links.add_many(rows)
        await tx.outbox.resolve_many(
            [(job_id, user_id) for user_id, job_id in grants if job_id is not None]
        )
        metrics.TOKENS.labels(self.purpose, "issued").inc(len(grants))
        return minted

    def token_of(self, job_id: uuid.UUID) -> str:
        """The token of the link mailed for outbox row `job_id`."""
        return tokens.derive(self.secret, self.purpose, job_id)

    def code_of(self, job_id: uuid.UUID) -> str:
        """The one-time code mailed beside the link of outbox row `job_id`."""
        return tokens.derive_code(self.secret, self.purpose, job_id)

    # -- checking -----------------------------------------------------------------------------

    async def find(self, tx: Tx, token: str) -> T | None:
        """The stored link of a well-formed `token` (`tokens.is_well_formed`), if any."""
        return await self.table(tx).by_digest(tokens.digest(self.secret, token))

    async def redeem_code(
        self, tx: Tx, email_key: str, code: str, now: datetime, tries: int
    ) -> T | None:
        """The link whose one-time code `code` (normalised, `tokens.normal_code`) is, for the
        account at `email_key`, with the code used up by this call; else None.

        The same statements run, and write the same rows, whether or not the address has an
        account, a live link or the right code — the look-up by address, one try counted (in
        `limit_hits`, under the link's id, or a random one when there is no live link), the
        digest computed and compared in constant time — so neither the answer nor its timing
        tells them apart. The count is atomic across processes (`LimitHits.take_many`), and
        every try counts, the right one too: a code answers at most `tries` tries. Its window
        is the link's lifetime, so it sees every try at the code."""
        links = self.table(tx)
        row = await links.live_code_of(email_key, now)
        link_id = row.id if row is not None else uuid.uuid4()
        digest = tokens.code_digest(self.secret, self.purpose, link_id, code)
        [within] = await tx.limit_hits.take_many(
            f"{self.purpose}-code", [link_id.hex], tries, now - self.ttl, now
        )
        stored = row.code_digest if row is not None else None
        right = tokens.same_digest(stored or _NO_DIGEST, digest)
        if row is None or not within or not right:
            return None
        return row if await links.use_code(row.id, digest, now) else None

    @staticmethod
    def usable(row: LinkToken, now: datetime) -> bool:
        """Not used, not revoked, not expired (valid at its TTL, dead a second later)."""
        return row.used_at is None and row.revoked_at is None and now <= row.expires_at

    @staticmethod
    def expired(row: LinkToken, now: datetime) -> bool:
        """Dead of age alone, never used: counted apart from the rest in the metrics."""
        return now > row.expires_at and row.used_at is None

    # -- resending ----------------------------------------------------------------------------

    async def sent_before(self, job: Job) -> tuple[T | None, User | None]:
        """For an outbox row resolved on an earlier attempt: the link its mail carried (None
        if it carried none) and the account it was resolved to (None if it is gone). The
        resend carries the same link (`token_of`) if the service finds it still worth sending:
        a dead link helps nobody."""
        async with self.store.tx() as tx:
            row = await self.table(tx).by_outbox(job.id)
            user = await tx.users.get(job.user_id) if job.user_id else None
        return row, user
