"""The layering is checked by a machine: the import contracts in pyproject.toml hold, and an
import that runs upward — the store reaching into the domain — breaks them.

The broken case runs `lint-imports` on a copy of the package with that one import added, so the
working tree is never touched. import-linter comes with the dev extra (`scripts/lint`)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
UPWARD = "from chaser_auth.domain import tokens  # noqa: F401\n"


def lint_imports(cwd: Path, *, src: Path) -> subprocess.CompletedProcess[str]:
    require(
        importlib.util.find_spec("importlinter") is not None,
        "import-linter is not installed (the dev extra: run scripts/lint once)",
    )
    return subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-logo", "--no-cache"],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_the_import_contracts_hold() -> None:
    result = lint_imports(ROOT, src=ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_contracts(tmp_path: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    package = tmp_path / "src" / "chaser_auth"
    shutil.copytree(ROOT / "src" / "chaser_auth", package, ignore=shutil.ignore_patterns("*.pyc"))
    repositories = package / "store" / "repositories.py"
    text = repositories.read_text(encoding="utf-8")
    anchor = "from chaser_auth.store.notify import CHANNEL\n"
    assert anchor in text
    repositories.write_text(text.replace(anchor, UPWARD + anchor), encoding="utf-8")

    result = lint_imports(tmp_path, src=tmp_path / "src")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "chaser_auth.store.repositories -> chaser_auth.domain.tokens" in result.stdout
    assert "The store imports no domain, no mail and no limiter BROKEN" in result.stdout
