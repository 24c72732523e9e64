"""One-time codes beside mailed links: a keyed digest of the code.

`code_digest` is an HMAC of the code under the server secret, bound to the link's row (never
the code itself); NULL for a link that has no code (printed by an operator) and once the code
is used. The tries at a code are counted in `limit_hits`, which exists already.

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


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("code_digest")
