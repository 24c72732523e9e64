"""Alembic environment: runs the migrations on our own engine (same SQLite pragmas, BEGIN
IMMEDIATE), holding a lock so that processes starting at once migrate one after the other."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from chaser_auth.store.engine import create_engine
from chaser_auth.store.tables import Base

# Any constant; PostgreSQL advisory locks are keyed by a 64-bit integer.
MIGRATION_LOCK_KEY = 0x63CEF650650D4C81 & 0x7FFFFFFFFFFFFFFF


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Held to the end of this transaction: a second `migrate` waits here, then finds
        # nothing left to do. On SQLite, BEGIN IMMEDIATE gives the same exclusion.
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()


async def _main() -> None:
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


asyncio.run(_main())
