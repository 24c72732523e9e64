"""Credential versions on accounts and sessions; the client address on audit events.

`users.credential_version` goes up whenever what proves who someone is changes (a password
set, reset or changed; the account disabled or enabled); each session carries the version it
was opened on and is accepted only while the account still has it. `audit_events.client` is
the client address as the per-client limits count it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("users", "sessions"):
        op.add_column(
            table,
            sa.Column("credential_version", sa.Integer(), nullable=False, server_default="0"),
        )
    op.add_column("audit_events", sa.Column("client", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("audit_events", "client")
    for table in ("sessions", "users"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("credential_version")
