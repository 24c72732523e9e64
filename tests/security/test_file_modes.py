"""What the embedded default leaves on disk is readable by its owner only, under the usual umask.

The SQLite file and its `-wal`/`-shm` hold addresses and password hashes; each `.eml` holds a
live link; the secret key mints links. The app is served over a real socket, with its state in
folders it has to create, and the modes are read with `os.stat`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FakeClock, make_settings, serve


@pytest.fixture
def usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("usual_umask")
async def test_database_mail_and_secret_are_private_under_umask_022(
    tmp_path: Path, clock: FakeClock
) -> None:
    state = tmp_path / "state"
    database = state / "auth.db"
    mail = state / "mail"
    key = state / "secret_key"
    settings = make_settings(
        tmp_path,
        database_url=f"sqlite+aiosqlite:///{database}",
        mail_dir=mail,
        secret_key=None,
        secret_key_file=key,
    )
    async with serve(settings, clock, smtp=None) as app:
        await app.create_user("owner@example.com")
        assert (await app.request_reset("owner@example.com")).status_code == 200
        await app.settle()
        [message] = mail.glob("*.eml")
        assert "reset-password#token=" in message.read_text()

        modes = {
            path.name: mode(path)
            for path in (state, database, Path(f"{database}-wal"), Path(f"{database}-shm"))
        }
        modes.update({"mail": mode(mail), "message": mode(message), "key": mode(key)})
    assert modes == {
        "state": 0o700,
        "auth.db": 0o600,
        "auth.db-wal": 0o600,
        "auth.db-shm": 0o600,
        "mail": 0o700,
        "message": 0o600,
        "key": 0o600,
    }
    # The narrowing is done per file: the process's umask is what it was.
    assert os.umask(0o022) == 0o022
