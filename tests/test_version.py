"""One version: pyproject.toml, the installed package's metadata, `chaser_auth.__version__` and
`chaser-auth --version` say the same, and CHANGELOG.md has a section for it."""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.version import Version

import chaser_auth
from tests.processes import CLI

ROOT = Path(__file__).resolve().parent.parent


def test_the_version_is_the_same_everywhere() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    # The metadata is written at install time: scripts/_venv reinstalls when pyproject changes.
    assert version("chaser-auth") == declared
    assert chaser_auth.__version__ == declared

    done = subprocess.run(
        [str(CLI), "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == f"chaser-auth {declared}"


def test_the_changelog_has_a_section_for_the_version() -> None:
    current = Version(chaser_auth.__version__)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    sections = re.findall(r"^## \[([^\]]+)\]", changelog, flags=re.MULTILINE)
    assert sections, "CHANGELOG.md has no '## [version]' sections"
    released = [Version(name) for name in sections if name != "Unreleased"]
    if current.is_devrelease or current.is_prerelease:
        # Work towards the next release is listed under Unreleased; the last release is older.
        assert sections[0] == "Unreleased"
        assert all(v < current for v in released)
    else:
        assert str(current) in sections
