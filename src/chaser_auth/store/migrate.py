"""`chaser-auth migrate`: Alembic, configured from our settings (no alembic.ini needed)."""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


# Alembic's `context` and `op` are process-wide: two threads migrating at once would trample
# each other. Processes are kept apart by the database (see migrations/env.py).
_in_process = threading.Lock()


def upgrade(database_url: str) -> None:
    """Bring the schema to the newest revision; a no-op when it is there already."""
    with _in_process:
        command.upgrade(alembic_config(database_url), "head")
