"""Alembic migrations: they build the schema, they are idempotent, they agree with the ORM
tables, and two processes starting at once on one new SQLite file migrate it exactly once."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from chaser_auth.store import migrate
from chaser_auth.store.tables import Base, UTCDateTime

ROOT = Path(__file__).resolve().parents[2]


def url_for(db: Path) -> str:
    return f"sqlite+aiosqlite:///{db}"


def head() -> str:
    heads = ScriptDirectory.from_config(migrate.alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1, f"the migrations have several heads: {heads}"
    return heads[0]


@contextlib.contextmanager
def raw(db: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(db)
    try:
        yield connection
    finally:
        connection.close()


def table_names(db: Path) -> set[str]:
    with raw(db) as connection:
        rows = connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
    return {name for (name,) in rows}


def schema_sql(db: Path) -> list[tuple[str, str, str | None]]:
    with raw(db) as connection:
        rows = connection.execute(
            "SELECT type, name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
    return [(kind, name, sql) for kind, name, sql in rows]


def versions(db: Path) -> list[str]:
    with raw(db) as connection:
        rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    return [version for (version,) in rows]


def differences(db: Path, metadata: sa.MetaData) -> list[Any]:
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as connection:
            # Types are compared too (UTCDateTime is compared through its DateTime impl, which
            # Alembic already equates with the migration's DateTime(timezone=True)).
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            diffs: list[Any] = compare_metadata(context, metadata)
            return diffs
    finally:
        engine.dispose()


def flatten(diffs: list[Any]) -> list[Any]:
    """compare_metadata nests column modifications in lists; one level is enough."""
    return [d for group in diffs for d in (group if isinstance(group, list) else [group])]


def test_upgrade_creates_the_schema_at_head(tmp_path: Path) -> None:
    db = tmp_path / "auth.db"
    assert not db.exists()

    migrate.upgrade(url_for(db))

    assert table_names(db) == {"alembic_version", *Base.metadata.tables}
    assert versions(db) == [head()]


def test_second_upgrade_is_a_no_op(tmp_path: Path) -> None:
    db = tmp_path / "auth.db"
    migrate.upgrade(url_for(db))
    with raw(db) as connection:
        connection.execute(
            "INSERT INTO audit_events (at, event) VALUES ('2026-01-01 00:00:00.000000', 'sentinel')"
        )
        connection.commit()
    before = schema_sql(db)

    migrate.upgrade(url_for(db))

    assert schema_sql(db) == before
    assert versions(db) == [head()]
    with raw(db) as connection:
        kept = connection.execute("SELECT event FROM audit_events").fetchall()
    assert kept == [("sentinel",)]


def test_orm_tables_and_migrations_agree(tmp_path: Path) -> None:
    db = tmp_path / "auth.db"
    migrate.upgrade(url_for(db))

    assert differences(db, Base.metadata) == []


def test_comparison_reports_real_differences(tmp_path: Path) -> None:
    # The comparison above must be able to fail: a copy of the tables with a new column, a
    # narrower type, a changed nullability and a missing index is reported on each count.
    db = tmp_path / "auth.db"
    migrate.upgrade(url_for(db))
    altered = sa.MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(altered)
    altered.tables["outbox"].append_column(sa.Column("priority", sa.Integer(), nullable=False))
    altered.tables["users"].c.email.type = sa.String(100)
    altered.tables["users"].c.password_hash.nullable = False
    sessions = altered.tables["sessions"]
    sessions.indexes.discard(next(i for i in sessions.indexes if i.name == "ix_sessions_user_id"))

    diffs = flatten(differences(db, altered))

    assert any(d[0] == "add_column" and (d[2], d[3].name) == ("outbox", "priority") for d in diffs)
    assert any(d[0] == "modify_type" and d[2:4] == ("users", "email") for d in diffs)
    assert any(d[0] == "modify_nullable" and d[2:4] == ("users", "password_hash") for d in diffs)
    assert any(d[0] == "remove_index" and d[1].name == "ix_sessions_user_id" for d in diffs)


def test_comparison_sees_through_the_utc_datetime_decorator(tmp_path: Path) -> None:
    # UTCDateTime is compared by what it stores: put on a string column, it is reported.
    db = tmp_path / "auth.db"
    migrate.upgrade(url_for(db))
    altered = sa.MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(altered)
    altered.tables["outbox"].c.kind.type = UTCDateTime()

    diffs = flatten(differences(db, altered))

    assert [(d[0], d[2], d[3]) for d in diffs] == [("modify_type", "outbox", "kind")]


# Each child imports everything, says it is ready, waits for the go signal, then migrates —
# so the two `upgrade` calls really do start together.
CHILD = """
import sys, time
from pathlib import Path
from chaser_auth.store import migrate
ready, go = Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
deadline = time.monotonic() + 60
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit("no go signal")
    time.sleep(0.001)
migrate.upgrade(sys.argv[1])
"""


@pytest.mark.parametrize("attempt", range(3))
def test_two_processes_migrating_one_new_file_at_once_both_succeed(
    tmp_path: Path, attempt: int
) -> None:
    db = tmp_path / "auth.db"
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{n}" for n in range(2)]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, url_for(db), str(flag), str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flag in ready
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(flag.exists() for flag in ready):
            assert all(child.poll() is None for child in children), "a child exited early"
            assert time.monotonic() < deadline, "the children never became ready"
            time.sleep(0.005)
        go.touch()
        outcomes = [child.communicate(timeout=60) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate()

    for child, (_, stderr) in zip(children, outcomes, strict=True):
        assert child.returncode == 0, stderr
    assert versions(db) == [head()]
    assert table_names(db) == {"alembic_version", *Base.metadata.tables}
    assert differences(db, Base.metadata) == []
