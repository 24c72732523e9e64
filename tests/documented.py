"""The machine's `localhost:8000` for tests that run documented commands verbatim.

Port 8000 is where a developer's own `scripts/serve` runs, and where the seed's snippets and
the README's commands send their requests. So that both can run at once, a test makes a
private network namespace (Linux, CAP_SYS_ADMIN: root, as CI runs) with a loopback of its own,
and starts its server, its SMTP sink and the commands in there: their `localhost:8000` is then
always the server this test started, on its own database. Where no namespace can be made, the
machine's own port 8000 is used if it is free; otherwise the tests skip (fail under
CHASER_AUTH_TEST_STRICT=1) and say why.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from tests.conftest import PASSWORD, TLS, require
from tests.processes import CLI

PORT = 8000
LOCAL_HOST = f"http://localhost:{PORT}"
T = TypeVar("T")


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
    assert language is None, "unclosed code fence"
    return blocks


# -- where localhost:8000 is ---------------------------------------------------------------------

CLONE_NEWNET = 0x40000000  # <sched.h>
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1  # <linux/sockios.h>, <net/if.h>
IFREQ = "16sH22x"  # struct ifreq: the interface name, then ifr_flags in a 24-byte union


def enter_private_network() -> None:
    """Move the calling thread (and whatever it starts: threads, processes, sockets) into a
    new network namespace, and bring its loopback up."""
    if not sys.platform.startswith("linux"):
        raise OSError("network namespaces are Linux only")
    libc = ctypes.CDLL(None, use_errno=True)
    # unshare(2) moves only the calling thread: the rest of the test process stays put.
    if libc.unshare(CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"unshare(CLONE_NEWNET): {os.strerror(code)}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        current = fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack(IFREQ, b"lo", 0))
        flags = struct.unpack(IFREQ, current)[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags | IFF_UP))


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Network:
    """Runs calls on the network the snippets see: in a thread inside a private namespace
    (`private`), or right here on the machine's own."""

    pool: ThreadPoolExecutor | None

    @property
    def private(self) -> bool:
        return self.pool is not None

    def run(self, call: Callable[[], T]) -> T:
        return call() if self.pool is None else self.pool.submit(call).result()


def private_network() -> Iterator[Network]:
    """The body of a `network` fixture: a private namespace, or the machine's own network
    when port 8000 is free there."""
    # One thread, kept for the whole test: every call runs in the namespace it entered.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="private-network")
    try:
        try:
            pool.submit(enter_private_network).result()
        except OSError as error:
            pool.shutdown()
            require(
                port_is_free(PORT),
                f"port {PORT} is busy and no private network namespace could be made for "
                f"the server these tests start ({error}): run them as root (as CI does) or "
                f"stop whatever listens on {PORT}",
            )
            yield Network(None)
        else:
            yield Network(pool)
    finally:
        pool.shutdown()


# -- a real `chaser-auth serve` on port 8000 ----------------------------------------------------


def base_env(**extra: str) -> dict[str, str]:
    # Inherit the environment, but not a developer's own CHASER_AUTH_* settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHASER_AUTH_")}
    env["CHASER_AUTH_OPERATOR_ADDRESS"] = "127.0.0.1:0"  # not the default 8001 another run holds
    env.update(extra)
    return env


def create_user(cwd: Path, env: dict[str, str], address: str, password: str = PASSWORD) -> None:
    done = subprocess.run(
        [str(CLI), "users", "create", address, "--password-stdin"],
        input=password + "\n",
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"created account [0-9a-f-]{36}\n", done.stdout), done.stdout


@contextlib.contextmanager
def serving(cwd: Path, env: dict[str, str], network: Network) -> Iterator[Path]:
    """`chaser-auth serve --port 8000` in `cwd`, on `network`, until it answers /healthz;
    stopped with SIGTERM on leaving. Yields the path of its log."""
    log_path = cwd / "serve.log"

    def log() -> str:
        return log_path.read_text(encoding="utf-8", errors="replace")

    def healthy() -> bool:
        try:
            return (
                httpx.get(f"http://127.0.0.1:{PORT}/healthz", timeout=1, verify=TLS).status_code
                == 200
            )
        except httpx.TransportError:
            return False

    with log_path.open("wb") as out:
        process = network.run(
            lambda: subprocess.Popen(
                [str(CLI), "serve", "--port", str(PORT)],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )
    try:
        deadline = time.monotonic() + 30
        while not network.run(healthy):
            if process.poll() is not None:
                pytest.fail(f"chaser-auth serve exited with {process.returncode}:\n{log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"chaser-auth serve did not become healthy:\n{log()}")
            time.sleep(0.05)
        yield log_path
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=25)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"chaser-auth serve ignored SIGTERM:\n{log()}")
