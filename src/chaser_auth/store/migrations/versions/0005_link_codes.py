"""One-time codes beside mailed links: a keyed digest of the code and the tries at it.

`code_digest` is an HMAC of the code under the server secret, bound to the link's row (never
the code itself); NULL for a link that has no code (printed by an operator) and once the code
is used or has had its tries. `code_attempts` counts the tries at the code.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLES = ("reset_tokens", "verify_tokens")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("code_digest", sa.String(64), nullable=True))
        op.add_column(
            table,
            sa.Column("code_attempts", sa.Integer(), nullable=False, server_default="0"),
        )


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("code_attempts")
            batch.drop_column("code_digest")
