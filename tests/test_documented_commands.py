"""The commands the README and docs/api.md show, run as written against `localhost:8000`.

The shell blocks are read from the documents (never copied here) and run by bash with
`set -euo pipefail` in a fresh directory that holds a link to this checkout's `.venv`, against
a real `chaser-auth serve` started there as `scripts/serve` starts it: the embedded defaults,
SQLite under ./var and mail as ./var/mail/*.eml. The one thing put before a block is a `curl`
that fails on an HTTP error status (`--fail-with-body`), so a refused request fails the block.
Where a block documents an answer (a `# {…}` line after the command), what the command printed
must match it: the same keys, and the same values except where the document writes `…` or an
example time. Server and commands run in a private network namespace where one can be made
(tests/documented.py), so a `scripts/serve` left running on port 8000 is never reached.

The Quick start's and the Development section's own commands are CI's: `.ci/run` builds the
image with `scripts/image`, starts `scripts/serve`, and runs `scripts/docs`, `scripts/lint` and
`scripts/test` with coverage.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.documented import (
    LOCAL_HOST,
    PORT,
    Network,
    base_env,
    fenced_blocks,
    port_is_free,
    private_network,
    serving,
)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
API_DOCS = ROOT / "docs" / "api.md"
CI = ROOT / ".ci" / "run"
STRICT_CURL = 'curl() { command curl --fail-with-body "$@"; }\n'
EXAMPLE_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def shell_block(document: Path, containing: str) -> str:
    text = document.read_text(encoding="utf-8")
    found = [body for lang, body in fenced_blocks(text) if lang == "sh" and containing in body]
    assert len(found) == 1, f"expected one sh block with {containing!r} in {document.name}"
    return found[0]


def documented_answers(block: str) -> list[Any]:
    return [json.loads(line[2:]) for line in block.splitlines() if line.startswith("# {")]


def printed_answers(stdout: str) -> list[Any]:
    """The JSON documents curl printed, one after another (curl adds no newline); a line of
    plain text between them (`created account …` from the CLI) is passed over."""
    decoder = json.JSONDecoder()
    answers: list[Any] = []
    rest = stdout.lstrip()
    while rest:
        if rest.startswith("{"):
            answer, end = decoder.raw_decode(rest)
            answers.append(answer)
        else:
            end = rest.find("\n") + 1 or len(rest)
        rest = rest[end:].lstrip()
    return answers


def matches(documented: Any, printed: Any) -> bool:
    if isinstance(documented, dict):
        return (
            isinstance(printed, dict)
            and documented.keys() == printed.keys()
            and all(matches(documented[key], printed[key]) for key in documented)
        )
    if isinstance(documented, str) and "…" in documented:
        return isinstance(printed, str) and printed != ""
    if isinstance(documented, str) and EXAMPLE_TIME.fullmatch(documented):
        return isinstance(printed, str) and EXAMPLE_TIME.fullmatch(printed) is not None
    return bool(documented == printed)


@dataclass
class Checkout:
    """A directory a reader would run the commands in: `.venv` there, a server on port 8000."""

    cwd: Path
    network: Network

    def run(self, block: str) -> subprocess.CompletedProcess[str]:
        script = "set -euo pipefail\n" + STRICT_CURL + block
        return self.network.run(
            lambda: subprocess.run(
                ["bash", "-c", script],
                cwd=self.cwd,
                env=base_env(),
                capture_output=True,
                text=True,
                timeout=120,
            )
        )

    def post(self, path: str, body: dict[str, str]) -> httpx.Response:
        return self.network.run(lambda: httpx.post(f"{LOCAL_HOST}{path}", json=body, timeout=30))


@pytest.fixture
def network() -> Iterator[Network]:
    yield from private_network()


@pytest.fixture
def checkout(tmp_path: Path, network: Network) -> Iterator[Checkout]:
    if not network.private and not port_is_free(PORT):
        pytest.fail(f"port {PORT} was taken while these tests were starting")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    with serving(tmp_path, base_env(), network):
        yield Checkout(tmp_path, network)


def assert_runs_as_documented(checkout: Checkout, block: str) -> None:
    done = checkout.run(block)

    assert done.returncode == 0, done.stdout + done.stderr
    documented = documented_answers(block)
    printed = printed_answers(done.stdout)
    assert len(printed) == len(documented), done.stdout
    for expected, answer in zip(documented, printed, strict=True):
        assert matches(expected, answer), (expected, answer)


def test_the_readme_reset_flow_runs_as_written(checkout: Checkout) -> None:
    block = shell_block(README, "/auth/password-reset/request")
    assert len(documented_answers(block)) == 5

    assert_runs_as_documented(checkout, block)
    # Again for another account: the mail step must take the newest mail, not the first by name.
    assert_runs_as_documented(checkout, block.replace("alice@", "carol@"))
    assert len(list((checkout.cwd / "var" / "mail").glob("*.eml"))) >= 2


def test_the_api_docs_account_flow_runs_as_written(checkout: Checkout) -> None:
    block = shell_block(API_DOCS, "/auth/register")
    assert documented_answers(block) == []

    done = checkout.run(block)

    assert done.returncode == 0, done.stdout + done.stderr
    register, sessions = printed_answers(done.stdout)  # DELETE and logout print nothing (204)
    assert set(register) == {"message"}
    assert [session["current"] for session in sessions["sessions"]] == [True]
    # The password the block changed to is the one that works now.
    new = {"email": "bob@example.com", "password": "another long passphrase, 2026"}
    old = {**new, "password": "correct horse battery staple 8"}
    assert checkout.post("/auth/login", new).status_code == 200
    assert checkout.post("/auth/login", old).status_code == 401


def test_the_quick_start_and_development_commands_are_ci_s() -> None:
    """The rest of the README's commands are scripts that exist, and those CI runs it runs."""
    text = README.read_text(encoding="utf-8")
    named = set(re.findall(r"^(?:\S+=\S+ )?(scripts/\w+)", text, flags=re.MULTILINE))
    named |= {
        match
        for _, body in fenced_blocks(text)
        for match in re.findall(r"(?:^|\s)(scripts/\w+)", body)
    }
    assert {"scripts/serve", "scripts/test", "scripts/lint", "scripts/docs"} <= named
    for script in named:
        path = ROOT / script
        assert path.is_file() and path.stat().st_mode & 0o111, f"{script} is not an executable"
    ci = CI.read_text(encoding="utf-8")
    ci_runs = set(re.findall(r"^\s*(scripts/\w+)", ci, flags=re.MULTILINE))
    assert {"scripts/serve", "scripts/test", "scripts/lint", "scripts/docs"} <= ci_runs
    assert "scripts/image" in ci_runs  # named in the Quick start; tests/test_image.py runs it
    assert "export CHASER_AUTH_COVERAGE=1" in ci
