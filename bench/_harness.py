"""Shared plumbing for the benchmarks: ports, server processes, accounts, /proc readings,
raw HTTP/1.1 answers, the SQLite file, and the Mann-Whitney U test.

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
from collections.abc import Sequence
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
VOLATILE_HEADERS = {b"date", b"x-request-id"}  # differ on every answer by design
# For account-creating processes that do not need the production hash cost (t=3, 64 MiB, p=4,
# ~0.15 s per hash here): the stored hash is never read on the reset-request path.
LOW_ARGON2_COST = {
    "CHASER_AUTH_ARGON2_TIME_COST": "1",
    "CHASER_AUTH_ARGON2_MEMORY_COST": "1024",
    "CHASER_AUTH_ARGON2_PARALLELISM": "1",
}


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


def _account_env(env: dict[str, str], production_cost: bool) -> dict[str, str]:
    """`env` for an account-creating process: log level WARNING and, unless `production_cost`,
    the lowered argon2 cost. With `production_cost` the argon2 settings stay as `env` has them
    (with `chaser_env`: the defaults, t=3, m=65536 KiB, p=4), i.e. the server's."""
    return dict(
        env,
        **({} if production_cost else LOW_ARGON2_COST),
        CHASER_AUTH_LOG_LEVEL="WARNING",
    )


def create_accounts(
    workdir: Path,
    env: dict[str, str],
    emails: list[str],
    parallel: int,
    budget_s: float,
    production_cost: bool = False,
) -> tuple[list[str], float]:
    """`chaser-auth users create EMAIL --password-stdin` for each address, `parallel` at a time,
    starting no new one after `budget_s` seconds. Returns the addresses created and the time.

    Unless `production_cost`, the argon2 cost is lowered for these CLI processes only: the
    stored hash is never read on the reset-request path, and at the default cost (t=3, 64 MiB,
    p=4) each hash takes ~0.15 s. A login bench needs `production_cost=True`.
    """
    started = time.monotonic()
    create_env = _account_env(env, production_cost)

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


def query_db(workdir: Path, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    """All rows of one query on `workdir`'s SQLite file, opened read-only (the server may still
    be writing to it). Raises `sqlite3.Error`."""
    db = workdir / "var" / "chaser-auth.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return [tuple(row) for row in con.execute(sql, params).fetchall()]
    finally:
        con.close()


def outbox_counts(workdir: Path) -> dict[str, int]:
    """Outbox rows by status, read straight from the SQLite file (read-only)."""
    try:
        rows = query_db(workdir, "SELECT status, count(*) FROM outbox GROUP BY status")
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
    workdir: Path, env: dict[str, str], emails: list[str], production_cost: bool = False
) -> tuple[int, float]:
    """Like `create_accounts`, through `bench/_make_accounts.py`: one interpreter for all of
    them (same service call as the CLI). Returns (created, seconds). The argon2 cost is lowered
    unless `production_cost` (then ~0.15 s per account, and the time limit grows with them)."""
    started = time.monotonic()
    done = subprocess.run(
        [str(PYTHON), str(BENCH_DIR / "_make_accounts.py")],
        cwd=workdir,
        env=_account_env(env, production_cost),
        input="\n".join(emails).encode(),
        capture_output=True,
        timeout=120 + (len(emails) if production_cost else 0),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"creating accounts failed: {done.stderr.decode(errors='replace')}")
    return int(done.stdout.split()[-1]), time.monotonic() - started


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response with a Content-Length: (head, body). `buffer` keeps leftovers."""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buffer += chunk
    head = bytes(buffer[:end])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    total = end + 4 + length
    while len(buffer) < total:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buffer += chunk
    body = bytes(buffer[end + 4 : total])
    del buffer[:total]
    return head, body


def mann_whitney_u(a: list[float], b: list[float]) -> tuple[float, float, str]:
    """Two-sided Mann-Whitney U test: (U of `a`, p-value, method)."""
    try:
        # mypy: import-untyped where scipy is installed without stubs (and where it is absent
        # too, as mypy knows a stub package for it), import-not-found where mypy knows of no
        # stubs, nothing at all with scipy-stubs installed.
        from scipy.stats import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
            mannwhitneyu,
        )
    except ImportError:
        pass
    else:
        res = mannwhitneyu(a, b, alternative="two-sided")
        return float(res.statistic), float(res.pvalue), "scipy.stats.mannwhitneyu"
    n1, n2 = len(a), len(b)
    n = n1 + n2
    pooled = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    rank_sum_a = 0.0
    ties = 0.0
    i = 0
    while i < n:  # average ranks over runs of equal values
        j = i
        while j + 1 < n and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        average = (i + j) / 2 + 1
        t = j - i + 1
        ties += t**3 - t
        rank_sum_a += average * sum(1 for k in range(i, j + 1) if pooled[k][1] == 0)
        i = j + 1
    u = rank_sum_a - n1 * (n1 + 1) / 2
    mean = n1 * n2 / 2
    sd = math.sqrt(n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))))
    if sd == 0:
        return u, 1.0, "normal approximation (all values equal)"
    z = (u - mean - math.copysign(0.5, u - mean)) / sd if u != mean else 0.0
    return u, math.erfc(abs(z) / math.sqrt(2)), "normal approximation, tie + continuity corr."
