"""Where each session is: a short description of its browser or client (from the User-Agent)
and the network it was last used from (an IPv4 /24 or IPv6 /48, never a whole address).

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("client_description", sa.String(100), nullable=True))
    op.add_column("sessions", sa.Column("client_place", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("client_place")
        batch.drop_column("client_description")
