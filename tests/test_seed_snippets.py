"""The seed document's SDK snippets, run verbatim against a real `chaser-auth serve` on port 8000.

The snippets are read from the seed's markdown fences (never copied here); the only change is
the host, `https://api.chaser.sh` → `http://localhost:8000`, as docs/api.md promises. Mail goes
to the conftest aiosmtpd sink, so "an email was sent" is a message that really arrived.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import socket
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

from tests.conftest import LINK, PASSWORD, Received, Smtp, require

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "docs" / "seed" / "000_63cef650650d4c81.txt"
CLI = Path(sys.executable).parent / "chaser-auth"
PORT = 8000
SEED_HOST = "https://api.chaser.sh"
LOCAL_HOST = f"http://localhost:{PORT}"
USER = "user@example.com"  # the address the seed's snippets ask about
MESSAGE = (
    "If an account exists for this email address, a link to reset its password has been sent to it."
)


# -- the seed document --------------------------------------------------------------------------


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every ``` fence in a markdown text, in order."""
    blocks: list[tuple[str, str]] = []
    language: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        if language is None:
            if line.startswith("```"):
                language = line[3:].strip()
                body = []
        elif line.strip() == "```":
            blocks.append((language, "\n".join(body) + "\n"))
            language = None
        else:
            body.append(line)
    assert language is None, "the seed has an unclosed code fence"
    return blocks


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


# -- a real `chaser-auth serve` on port 8000 ----------------------------------------------------


def base_env(**extra: str) -> dict[str, str]:
    # Inherit the environment, but not a developer's own CHASER_AUTH_* settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHASER_AUTH_")}
    env["CHASER_AUTH_OPERATOR_ADDRESS"] = "127.0.0.1:0"  # not the default 8001 another run holds
    env.update(extra)
    return env


@dataclass
class Server:
    cwd: Path
    env: dict[str, str]
    log_path: Path
    smtp: Smtp

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def create_user(self, address: str, password: str = PASSWORD) -> None:
        done = subprocess.run(
            [str(CLI), "users", "create", address, "--password-stdin"],
            input=password + "\n",
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert re.fullmatch(r"created account [0-9a-f-]{36}\n", done.stdout), done.stdout

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


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def server(tmp_path: Path, smtp: Smtp) -> Iterator[Server]:
    """`chaser-auth serve --port 8000` in a fresh directory, mail to the aiosmtpd sink.

    Function-scoped because `smtp` is: each test gets its own server, database and sink."""
    if not port_is_free(PORT):
        pytest.fail(
            f"port {PORT} is busy: the seed's snippets name http://localhost:{PORT}, so these "
            "tests need it free (stop whatever listens there)"
        )
    env = base_env(
        CHASER_AUTH_SMTP_URL=smtp.url,
        CHASER_AUTH_ARGON2_TIME_COST="1",
        CHASER_AUTH_ARGON2_MEMORY_COST="1024",
        CHASER_AUTH_ARGON2_PARALLELISM="1",
        CHASER_AUTH_WORKER_POLL_INTERVAL="0.05",
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(CLI), "serve", "--port", str(PORT)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    served = Server(tmp_path, env, log_path, smtp)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"chaser-auth serve exited with {process.returncode}:\n{served.log()}")
            try:
                if httpx.get(f"http://127.0.0.1:{PORT}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"chaser-auth serve did not become healthy:\n{served.log()}")
            time.sleep(0.05)
        served.create_user(USER)
        yield served
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=25)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"chaser-auth serve ignored SIGTERM:\n{served.log()}")


def run_snippet(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, env=base_env(), capture_output=True, text=True, timeout=60
    )


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

    done = run_snippet([sys.executable, str(script)], server.cwd)

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

    done = run_snippet([node, str(script)], server.cwd)

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
    response = httpx.post(
        f"{LOCAL_HOST}/auth/password-reset/request", json={"email": USER}, timeout=30
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
