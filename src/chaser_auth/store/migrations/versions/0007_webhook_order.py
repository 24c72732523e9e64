"""Webhooks: an index for handing out one account's webhook rows in order.

Webhook events are outbox rows (kind `webhook:<endpoint>`); no column is new. A webhook row is
claimed only when no older queued row of its kind and account exists (`Outbox.claim`): this
index answers that question without scanning the queue.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_account_kind", "outbox", ["user_id", "kind", "status"])


def downgrade() -> None:
    op.drop_index("ix_outbox_account_kind", table_name="outbox")
