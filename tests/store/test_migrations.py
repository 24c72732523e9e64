"""Alembic migrations, on every supported database (SQLite and PostgreSQL): they build the
schema, they are idempotent, they agree with the ORM tables, and processes starting at once on
one new database migrate it exactly once — kept apart by a transaction-scoped advisory lock on
PostgreSQL and by BEGIN IMMEDIATE on SQLite (see migrations/env.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from chaser_auth.store import migrate
from chaser_auth.store.engine import sqlite_path
from chaser_auth.store.tables import Base, UTCDateTime
from tests.conftest import EVERY_BACKEND, Postgres

BACKENDS = EVERY_BACKEND
ROOT = Path(__file__).resolve().parents[2]
# How many processes race to migrate one new database: PostgreSQL serves many connections at
# once, so it gets a bigger crowd than an SQLite file.
RACERS = {"sqlite": 2, "postgresql": 4}

T = TypeVar("T")


@pytest.fixture
def empty_url(
    request: pytest.FixtureRequest, tmp_path: Path, backend: tuple[str, str]
) -> Iterator[str]:
    """A new, empty database on the backend under test: an SQLite file that does not exist
    yet, or a PostgreSQL database of this test's own with no tables (dropped when it ends)."""
    if backend[0] == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/auth.db"
        return
    # Only PostgreSQL runs ask for the server, so a machine without one still runs SQLite.
    server: Postgres = request.getfixturevalue("postgres")
    with server.database(migrated=False) as url:
        yield url


# -- backend-neutral inspection (SQLAlchemy's async engine: asyncpg or aiosqlite) ---------------


def with_engine(url: str, use: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = create_async_engine(url)
        try:
            return await use(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def inspected(url: str, look: Callable[[sa.Connection], T]) -> T:
    """`look(sync_connection)`, run on a connection to the database at `url`."""

    async def use(engine: AsyncEngine) -> T:
        async with engine.connect() as connection:
            return await connection.run_sync(look)

    return with_engine(url, use)


def execute(url: str, statement: str) -> None:
    """Run one statement in a transaction of its own, and commit it."""

    async def use(engine: AsyncEngine) -> None:
        async with engine.begin() as connection:
            await connection.execute(sa.text(statement))

    with_engine(url, use)


def is_new(url: str) -> bool:
    """Nothing there yet: no SQLite file (looking does not create one), or no tables."""
    path = sqlite_path(url)
    if path is not None:
        return not path.exists()
    return table_names(url) == set()


def head() -> str:
    heads = ScriptDirectory.from_config(migrate.alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1, f"the migrations have several heads: {heads}"
    return heads[0]


def table_names(url: str) -> set[str]:
    return inspected(url, lambda connection: set(sa.inspect(connection).get_table_names()))


def versions(url: str) -> list[str]:
    def look(connection: sa.Connection) -> list[str]:
        rows = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
        return list(rows.scalars())

    return inspected(url, look)


def rows(url: str, query: str) -> list[tuple[Any, ...]]:
    return inspected(url, lambda connection: [tuple(r) for r in connection.execute(sa.text(query))])


def schema(url: str) -> dict[str, dict[str, list[Any]]]:
    """What reflection sees of every table — columns (name, type as this dialect spells it,
    nullability, server default), primary key, indexes, unique constraints, foreign keys — in
    a form that compares equal exactly when the schema is the same."""

    def look(connection: sa.Connection) -> dict[str, dict[str, list[Any]]]:
        inspector = sa.inspect(connection)
        dialect = connection.dialect
        snapshot: dict[str, dict[str, list[Any]]] = {}
        for table in sorted(inspector.get_table_names()):
            snapshot[table] = {
                "columns": [
                    (c["name"], c["type"].compile(dialect=dialect), c["nullable"], c["default"])
                    for c in inspector.get_columns(table)
                ],
                "primary_key": list(inspector.get_pk_constraint(table)["constrained_columns"]),
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                    for i in inspector.get_indexes(table)
                ),
                "unique": sorted(
                    (
                        (u["name"], tuple(u["column_names"]))
                        for u in inspector.get_unique_constraints(table)
                    ),
                    key=repr,
                ),
                "foreign_keys": sorted(
                    (
                        (
                            f["name"],
                            tuple(f["constrained_columns"]),
                            f["referred_table"],
                            tuple(f["referred_columns"]),
                            f.get("options", {}).get("ondelete"),
                        )
                        for f in inspector.get_foreign_keys(table)
                    ),
                    key=repr,
                ),
            }
        return snapshot

    return inspected(url, look)


def differences(url: str, metadata: sa.MetaData) -> list[Any]:
    def compare(connection: sa.Connection) -> list[Any]:
        # Types are compared too (UTCDateTime is compared through its DateTime impl, which
        # Alembic already equates with the migration's DateTime(timezone=True)).
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        diffs: list[Any] = compare_metadata(context, metadata)
        return diffs

    return inspected(url, compare)


def flatten(diffs: list[Any]) -> list[Any]:
    """compare_metadata nests column modifications in lists; one level is enough."""
    return [d for group in diffs for d in (group if isinstance(group, list) else [group])]


def copy_of_the_tables() -> sa.MetaData:
    altered = sa.MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(altered)
    return altered


# -- the tests ----------------------------------------------------------------------------------


def test_upgrade_creates_the_schema_at_head(empty_url: str) -> None:
    assert is_new(empty_url)

    migrate.upgrade(empty_url)

    assert table_names(empty_url) == {"alembic_version", *Base.metadata.tables}
    assert versions(empty_url) == [head()]


def test_second_upgrade_is_a_no_op(empty_url: str) -> None:
    migrate.upgrade(empty_url)
    execute(
        empty_url,
        "INSERT INTO audit_events (at, event) VALUES ('2026-01-01 00:00:00.000000', 'sentinel')",
    )
    before = schema(empty_url)
    assert set(before) == {"alembic_version", *Base.metadata.tables}

    migrate.upgrade(empty_url)

    assert schema(empty_url) == before
    assert versions(empty_url) == [head()]
    assert rows(empty_url, "SELECT event FROM audit_events") == [("sentinel",)]


def test_orm_tables_and_migrations_agree(empty_url: str) -> None:
    migrate.upgrade(empty_url)

    assert differences(empty_url, Base.metadata) == []


def test_comparison_reports_real_differences(empty_url: str) -> None:
    # The comparison above must be able to fail: a copy of the tables with a new column, a
    # narrower type, a changed nullability and a missing index is reported on each count.
    migrate.upgrade(empty_url)
    altered = copy_of_the_tables()
    altered.tables["outbox"].append_column(sa.Column("priority", sa.Integer(), nullable=False))
    altered.tables["users"].c.email.type = sa.String(100)
    altered.tables["users"].c.password_hash.nullable = False
    sessions = altered.tables["sessions"]
    sessions.indexes.discard(next(i for i in sessions.indexes if i.name == "ix_sessions_user_id"))

    diffs = flatten(differences(empty_url, altered))

    assert any(d[0] == "add_column" and (d[2], d[3].name) == ("outbox", "priority") for d in diffs)
    assert any(d[0] == "modify_type" and d[2:4] == ("users", "email") for d in diffs)
    assert any(d[0] == "modify_nullable" and d[2:4] == ("users", "password_hash") for d in diffs)
    assert any(d[0] == "remove_index" and d[1].name == "ix_sessions_user_id" for d in diffs)


def test_comparison_sees_through_the_utc_datetime_decorator(empty_url: str) -> None:
    # UTCDateTime is compared by what it stores: put on a string column, it is reported.
    migrate.upgrade(empty_url)
    altered = copy_of_the_tables()
    altered.tables["outbox"].c.kind.type = UTCDateTime()

    diffs = flatten(differences(empty_url, altered))

    assert [(d[0], d[2], d[3]) for d in diffs] == [("modify_type", "outbox", "kind")]


# Each child imports everything, says it is ready, waits for the go signal, then migrates —
# so the `upgrade` calls really do start together.
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
def test_processes_migrating_one_new_database_at_once_all_succeed(
    empty_url: str, backend: tuple[str, str], tmp_path: Path, attempt: int
) -> None:
    assert is_new(empty_url)
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{n}" for n in range(RACERS[backend[0]])]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, empty_url, str(flag), str(go)],
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
    assert versions(empty_url) == [head()]
    assert table_names(empty_url) == {"alembic_version", *Base.metadata.tables}
    assert differences(empty_url, Base.metadata) == []
