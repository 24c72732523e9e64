"""Shared plumbing for the benchmarks: ports, server processes, accounts, /proc readings.

Everything here talks to 127.0.0.1 only, and every process it starts is stopped by `stop()`
(SIGTERM, then SIGKILL after a grace period), which the scripts call from `finally`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HOST = "127.0.0.1"  # the only address any benchmark ever talks to
BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = VENV_BIN / "python"
CHASER = VENV_BIN / "chaser-auth"
PASSWORD = "correct horse battery staple 7"  # noqa: S105 - a throwaway bench account password
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def uvicorn_impl() -> str:
    """What uvicorn's `loop="auto"`/`http="auto"` pick in this venv (both servers use auto)."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"loop={loop} http={http}"


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any CHASER_AUTH_* it happened to carry, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHASER_AUTH_")}
    env.update(extra)
    return env


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    log: IO[bytes] | None = field(repr=False, default=None)

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_server(
    name: str, argv: list[str], port: int, cwd: Path, env: dict[str, str], log_path: Path
) -> Server:
    """Start `argv` (stdout+stderr to `log_path`, never a pipe nobody drains) and wait until
    it accepts TCP connections on `port` (at most 30 s)."""
    log = log_path.open("wb")
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    server = Server(name, proc, port, log_path, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stop(server)
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return server
        time.sleep(0.05)
    stop(server)
    raise RuntimeError(f"{name} did not listen on {HOST}:{port} within 30 s; see {log_path}")


def stop(server: Server | None, grace: float = 10.0) -> int | None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL. Returns the exit code."""
    if server is None:
        return None
    proc = server.proc
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
    finally:
        if server.log is not None:
            server.log.close()
    return proc.returncode


def kill_quietly(proc: subprocess.Popen[Any] | None) -> None:
    """For helper processes (load generators): SIGTERM, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of a live process, in MB (MiB)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """utime+stime of a live process, all of its threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def chaser_env(workdir: Path, **extra: str) -> dict[str, str]:
    """Default chaser-auth settings, except the per-IP limit (so the bench is not a 429 bench)."""
    del workdir  # everything else defaults to ./var under the working directory
    return clean_env(CHASER_AUTH_RATE_LIMIT_RESET_PER_IP="1000000/minute", **extra)


def start_chaser(
    name: str, workdir: Path, env: dict[str, str], serve_args: tuple[str, ...] = ()
) -> Server:
    port = free_port()
    return start_server(
        name,
        [str(CHASER), "serve", "--host", HOST, "--port", str(port), *serve_args],
        port,
        workdir,
        env,
        workdir / "server.log",
    )


def create_accounts(
    workdir: Path, env: dict[str, str], emails: list[str], parallel: int, budget_s: float
) -> tuple[list[str], float]:
    """`chaser-auth users create EMAIL --password-stdin` for each address, `parallel` at a time,
    starting no new one after `budget_s` seconds. Returns the addresses created and the time.

    The argon2 cost is lowered for these CLI processes only: the stored hash is never read on
    the reset-request path, and at the default cost (t=3, 64 MiB, p=4) each hash takes ~0.15 s.
    """
    started = time.monotonic()
    create_env = dict(
        env,
        CHASER_AUTH_ARGON2_TIME_COST="1",
        CHASER_AUTH_ARGON2_MEMORY_COST="1024",
        CHASER_AUTH_ARGON2_PARALLELISM="1",
        CHASER_AUTH_LOG_LEVEL="WARNING",
    )

    def one(email: str) -> str | None:
        if time.monotonic() - started > budget_s:
            return None
        done = subprocess.run(
            [str(CHASER), "users", "create", email, "--password-stdin"],
            cwd=workdir,
            env=create_env,
            input=(PASSWORD + "\n").encode(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            print(
                f"  users create {email} failed ({done.returncode}): "
                f"{done.stderr.decode(errors='replace').strip()[:300]}",
                file=sys.stderr,
            )
            return None
        return email

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        created = [e for e in pool.map(one, emails) if e is not None]
    return created, time.monotonic() - started


def outbox_counts(workdir: Path) -> dict[str, int]:
    """Outbox rows by status, read straight from the SQLite file (read-only)."""
    db = workdir / "var" / "chaser-auth.db"
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute("SELECT status, count(*) FROM outbox GROUP BY status").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        return {"error": 1, str(exc): 0}
    return {str(status): int(count) for status, count in rows}


def log_problems(path: Path) -> dict[str, int]:
    """Counts of worrying lines in a server log."""
    counts = {"ERROR": 0, "WARNING": 0, "Traceback": 0, "unhandled": 0}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return counts
    for line in text.splitlines():
        for word in counts:
            if word in line:
                counts[word] += 1
    return counts


def pct(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def create_accounts_in_one_process(
    workdir: Path, env: dict[str, str], emails: list[str]
) -> tuple[int, float]:
    """Like `create_accounts`, through `bench/_make_accounts.py`: one interpreter for all of
    them (same service call as the CLI). Returns (created, seconds)."""
    started = time.monotonic()
    done = subprocess.run(
        [str(PYTHON), str(BENCH_DIR / "_make_accounts.py")],
        cwd=workdir,
        env=dict(
            env,
            CHASER_AUTH_ARGON2_TIME_COST="1",
            CHASER_AUTH_ARGON2_MEMORY_COST="1024",
            CHASER_AUTH_ARGON2_PARALLELISM="1",
            CHASER_AUTH_LOG_LEVEL="WARNING",
        ),
        input="\n".join(emails).encode(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"creating accounts failed: {done.stderr.decode(errors='replace')}")
    return int(done.stdout.split()[-1]), time.monotonic() - started
