"""Per-address limit hits kept in the database (used when no Redis is configured).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "limit_hits",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("scope", sa.String(32), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_limit_hits_scope_key_at", "limit_hits", ["scope", "key", "at"])


def downgrade() -> None:
    op.drop_index("ix_limit_hits_scope_key_at", table_name="limit_hits")
    op.drop_table("limit_hits")
