"""Where each session is: a short description of its browser or client (from the User-Agent)
and the network it was last used from (an IPv4 /24 or IPv6 /48, never a whole address). And
the links of an address change: `email_change_tokens` (mailed to the new address, with it) and
`email_undo_tokens` (mailed to the old one after the change, with it).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


TS = sa.DateTime(timezone=True)
LINKS = {"email_change_tokens": "new_email", "email_undo_tokens": "old_email"}


def upgrade() -> None:
    op.add_column("sessions", sa.Column("client_description", sa.String(100), nullable=True))
    op.add_column("sessions", sa.Column("client_place", sa.String(64), nullable=True))
    for table, address in LINKS.items():
        op.create_table(
            table,
            sa.Column("id", sa.Uuid(), primary_key=True),
            sa.Column(
                "user_id",
                sa.Uuid(),
                sa.ForeignKey("users.id", ondelete="CASCADE"),
                nullable=False,
            ),
            sa.Column("token_digest", sa.String(64), nullable=False, unique=True),
            sa.Column("outbox_id", sa.Uuid(), nullable=True, unique=True),
            sa.Column("created_at", TS, nullable=False),
            sa.Column("expires_at", TS, nullable=False),
            sa.Column("used_at", TS, nullable=True),
            sa.Column("revoked_at", TS, nullable=True),
            # every link table has it (0005); an address change's link shows no code
            sa.Column("code_digest", sa.String(64), nullable=True),
            sa.Column(address, sa.String(320), nullable=True),
        )
        op.create_index(f"ix_{table}_user_id", table, ["user_id"])


def downgrade() -> None:
    for table in LINKS:
        op.drop_index(f"ix_{table}_user_id", table_name=table)
        op.drop_table(table)
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("client_place")
        batch.drop_column("client_description")
