"""The seed document's SDK snippets, run verbatim against a real `chaser-auth serve` on port 8000.

The snippets are read from the seed's markdown fences (never copied here); the only change is
the host, `https://api.chaser.sh` → `http://localhost:8000`, as docs/api.md promises. Mail goes
to an aiosmtpd sink, so "an email was sent" is a message that really arrived.

The server, its SMTP sink and the snippets run in a private network namespace where one can be
made, so a developer's own `scripts/serve` on port 8000 neither breaks these tests nor gets
their requests (tests/documented.py).
"""

from __future__ import annotations

import ast
import contextlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import LINK, PASSWORD, Received, Smtp, require, smtp_server
from tests.documented import (
    LOCAL_HOST,
    PORT,
    Network,
    base_env,
    create_user,
    fenced_blocks,
    port_is_free,
    private_network,
    serving,
)

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "docs" / "seed" / "000_63cef650650d4c81.txt"
SEED_HOST = "https://api.chaser.sh"
USER = "user@example.com"  # the address the seed's snippets ask about
MESSAGE = (
    "If an account exists for this email address, a link to reset its password has been sent to it."
)


# -- the seed document --------------------------------------------------------------------------


def seed_block(language: str) -> str:
    found = [
        body for lang, body in fenced_blocks(SEED.read_text(encoding="utf-8")) if lang == language
    ]
    assert len(found) == 1, f"expected one ```{language} block in the seed, found {len(found)}"
    return found[0]


def localised(snippet: str) -> str:
    """The snippet with its host pointed at the local server — the one change allowed."""
    assert snippet.count(SEED_HOST) == 1, "the snippet should name the Chaser host exactly once"
    local = snippet.replace(SEED_HOST, LOCAL_HOST)
    assert local.count(LOCAL_HOST) == 1
    assert SEED_HOST not in local
    return local


def response_schema() -> dict[str, Any]:
    """The 200 response schema of the seed's OpenAPI block, with its $ref resolved."""
    spec = yaml.safe_load(seed_block("yaml"))
    operation = spec["paths"]["/auth/password-reset/request"]["post"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    prefix = "#/components/schemas/"
    assert schema["$ref"].startswith(prefix)
    resolved: dict[str, Any] = spec["components"]["schemas"][schema["$ref"][len(prefix) :]]
    return resolved


# -- where localhost:8000 is (tests/documented.py) ------------------------------------------------


@pytest.fixture
def network() -> Iterator[Network]:
    yield from private_network()


@pytest.fixture
def smtp(network: Network) -> Iterator[Smtp]:
    """The conftest's SMTP sink, listening on the snippets' network."""
    running = smtp_server()
    server = network.run(running.__enter__)
    try:
        yield server
    finally:
        network.run(lambda: running.__exit__(None, None, None))


# -- a real `chaser-auth serve` on port 8000 ----------------------------------------------------


@dataclass
class Server:
    cwd: Path
    env: dict[str, str]
    log_path: Path
    smtp: Smtp
    network: Network

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def create_user(self, address: str, password: str = PASSWORD) -> None:
        create_user(self.cwd, self.env, address, password)

    def run_snippet(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        return self.network.run(
            lambda: subprocess.run(
                command, cwd=self.cwd, env=base_env(), capture_output=True, text=True, timeout=60
            )
        )

    def wait_for_mail(self, count: int, timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.smtp.sink.to(USER)
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"expected {count} message(s) to {USER}, got {len(got)}\n{self.log()}"
                )
            time.sleep(0.02)


@pytest.fixture
def server(tmp_path: Path, smtp: Smtp, network: Network) -> Iterator[Server]:
    """`chaser-auth serve --port 8000` in a fresh directory, mail to the aiosmtpd sink.

    Function-scoped because `smtp` is: each test gets its own server, database and sink."""
    if not network.private and not port_is_free(PORT):
        pytest.fail(f"port {PORT} was taken while these tests were starting")
    env = base_env(
        CHASER_AUTH_SMTP_URL=smtp.url,
        CHASER_AUTH_ARGON2_TIME_COST="1",
        CHASER_AUTH_ARGON2_MEMORY_COST="1024",
        CHASER_AUTH_ARGON2_PARALLELISM="1",
        CHASER_AUTH_WORKER_POLL_INTERVAL="0.05",
    )
    with serving(tmp_path, env, network) as log_path:
        served = Server(tmp_path, env, log_path, smtp, network)
        served.create_user(USER)
        yield served


def assert_reset_link(received: Received) -> None:
    assert received.recipients == [USER]
    link, token = received.link()
    assert link == f"{LOCAL_HOST}/reset-password#token={token}"
    assert LINK.fullmatch(link)


# -- the tests ----------------------------------------------------------------------------------


def test_seed_snippets_all_name_the_chaser_host_once() -> None:
    blocks = fenced_blocks(SEED.read_text(encoding="utf-8"))
    languages = [lang for lang, _ in blocks]
    assert {"yaml", "python", "javascript"} <= set(languages)
    for language in ("python", "javascript"):
        local = localised(seed_block(language))
        assert f"{LOCAL_HOST}/auth/password-reset/request" in local
        assert USER in local


def test_python_snippet_runs_verbatim_and_a_reset_email_arrives(server: Server) -> None:
    script = server.cwd / "snippet.py"
    script.write_text(localised(seed_block("python")), encoding="utf-8")

    done = server.run_snippet([sys.executable, str(script)])

    assert done.returncode == 0, done.stderr + server.log()
    assert done.stderr == ""
    printed = ast.literal_eval(done.stdout.strip())
    assert printed == {"message": MESSAGE}
    assert done.stdout == repr({"message": MESSAGE}) + "\n"
    [received] = server.wait_for_mail(1)
    assert_reset_link(received)


def test_javascript_snippet_runs_verbatim_and_a_reset_email_arrives(server: Server) -> None:
    node = shutil.which("node")
    require(node, "node is not installed")
    assert node is not None
    # The snippet uses top-level await, which node allows only in an ES module.
    script = server.cwd / "snippet.mjs"
    script.write_text(localised(seed_block("javascript")), encoding="utf-8")

    done = server.run_snippet([node, str(script)])

    assert done.returncode == 0, done.stderr + server.log()
    assert done.stderr == "", "the snippet's catch branch logs errors to stderr"
    # console.log of the parsed body: node's inspect form of {message: '…'}.
    printed = re.fullmatch(r"\{\s*message: '(?P<message>[^']*)'\s*\}\n", done.stdout)
    assert printed, done.stdout
    assert printed["message"] == MESSAGE
    [received] = server.wait_for_mail(1)
    assert_reset_link(received)


def test_response_honours_the_seeds_openapi_schema(server: Server) -> None:
    schema = response_schema()
    assert schema["type"] == "object"
    response = server.network.run(
        lambda: httpx.post(
            f"{LOCAL_HOST}/auth/password-reset/request", json={"email": USER}, timeout=30
        )
    )
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == "application/json"
    body = response.json()
    assert isinstance(body, dict)
    assert set(body) == set(schema["properties"]) == {"message"}
    assert set(schema["required"]) <= set(body)
    for name, prop in schema["properties"].items():
        assert prop["type"] == "string"
        assert isinstance(body[name], str)
    assert body["message"] == MESSAGE
    [received] = server.wait_for_mail(1)
    assert_reset_link(received)


def test_snippets_reach_our_server_while_another_holds_port_8000(
    tmp_path_factory: pytest.TempPathFactory, network: Network, server: Server
) -> None:
    """A developer's `scripts/serve` on the machine's port 8000 (here a real `chaser-auth
    serve` that knows the same account) neither breaks the snippet tests nor gets their
    requests: the mail arrives at this test's sink, none at the other server."""
    require(network.private, "needs a private network namespace (run as root, as CI does)")
    theirs = tmp_path_factory.mktemp("theirs")
    env = base_env(CHASER_AUTH_ARGON2_TIME_COST="1", CHASER_AUTH_ARGON2_MEMORY_COST="1024")
    with contextlib.ExitStack() as stack:
        if port_is_free(PORT):  # else something else already holds it: just as good
            stack.enter_context(serving(theirs, env, Network(None)))
            create_user(theirs, env, USER)
        assert not port_is_free(PORT)
        script = server.cwd / "snippet.py"
        script.write_text(localised(seed_block("python")), encoding="utf-8")

        done = server.run_snippet([sys.executable, str(script)])

        assert done.returncode == 0, done.stderr + server.log()
        assert done.stdout == repr({"message": MESSAGE}) + "\n"
        [received] = server.wait_for_mail(1)
        assert_reset_link(received)
    # Their server writes its mail to ./var/mail (the embedded default): it got no request.
    assert list(theirs.glob("var/mail/*.eml")) == []
