"""Email-verification tokens (digests only), the same shape as reset tokens.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "verify_tokens",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("token_digest", sa.String(64), nullable=False, unique=True),
        sa.Column("outbox_id", sa.Uuid(), nullable=True, unique=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS, nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
    )
    op.create_index("ix_verify_tokens_user_id", "verify_tokens", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_verify_tokens_user_id", table_name="verify_tokens")
    op.drop_table("verify_tokens")
