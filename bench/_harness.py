"""Shared plumbing for the benchmarks: ports, server processes, accounts, /proc readings,
load generation (wrk or loadgen.py), raw HTTP/1.1 answers, the SQLite file, PostgreSQL and
Redis housekeeping, and the Mann-Whitney U test.

Everything here talks to 127.0.0.1 only, and every process it starts is stopped by `stop()`
(SIGTERM, then SIGKILL after a grace period, to its whole process group), which the scripts
call from `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
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
RESET_REQUEST_PATH = "/auth/password-reset/request"  # the reset request
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
    """SIGTERM, wait up to `grace` seconds, then SIGKILL. Returns the exit code.

    The server was started in a session (and process group) of its own, whose id is its pid:
    the SIGKILL goes to that whole group, and so does one to anything of the group still alive
    once the server itself has gone (worker processes of `serve --workers N` whose master died
    before stopping them)."""
    if server is None:
        return None
    proc = server.proc
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait(timeout=5)
        _kill_group(proc.pid)
    finally:
        if server.log is not None:
            server.log.close()
    return proc.returncode


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


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


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: fields[0] is the state, [1] the ppid."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    """utime+stime of a live process, all of its threads, in seconds; with `reaped_children`
    also the CPU time of the children it has waited for (cutime+cstime)."""
    fields = _stat_fields(pid)
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def _all_processes() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command name) of every process visible in /proc."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            text = (entry / "stat").read_text()
            name = text[text.index("(") + 1 : text.rindex(")")]
            table[int(entry.name)] = (int(text.rsplit(")", 1)[1].split()[1]), name)
    return table


def process_tree(pid: int) -> list[int]:
    """`pid` and all of its live descendants (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for child, (parent, _) in _all_processes().items():
        children.setdefault(parent, []).append(child)
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def tree_cpu_by_pid(pid: int) -> dict[int, float]:
    """CPU seconds of `pid` and of each of its live descendants, by pid."""
    readings: dict[int, float] = {}
    for member in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            readings[member] = cpu_seconds(member)
    return readings


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its live descendants (processes gone meanwhile count 0)."""
    return sum(tree_cpu_by_pid(pid).values())


def tree_peak_rss_mb(pid: int) -> tuple[float | None, int]:
    """(sum of VmHWM over `pid` and its live descendants in MB, how many processes). Pages
    that processes share (libraries, copy-on-write) count once per process, so this is an
    upper bound of what the tree needs."""
    readings = [peak_rss_mb(member) for member in process_tree(pid)]
    found = [mb for mb in readings if mb is not None]
    return (sum(found) if found else None), len(found)


def command_cpu_seconds(name: str) -> float:
    """CPU seconds of every live process whose command name is `name` (e.g. "postgres"),
    plus what the top ones of them (whose parent is not `name`) have reaped from exited
    children — so a PostgreSQL backend that ended between two readings still counts."""
    table = _all_processes()
    total = 0.0
    for pid, (parent, comm) in table.items():
        if comm != name:
            continue
        top = table.get(parent, (0, ""))[1] != name
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(pid, reaped_children=top)
    return total


def system_busy_s() -> float:
    """Busy CPU seconds of the whole machine (all CPUs) since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLK_TCK


def wait_for_log(path: Path, text: str, count: int, timeout: float) -> bool:
    """Wait until `text` occurs at least `count` times in the file at `path`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if path.read_text(errors="replace").count(text) >= count:
                return True
        time.sleep(0.1)
    return False


# Client addresses the load generators send as X-Forwarded-For: RFC 2544's benchmarking range.
CLIENTS = [f"198.18.{i // 256}.{i % 256}" for i in range(4096)]


def chaser_env(workdir: Path, **extra: str) -> dict[str, str]:
    """Default chaser-auth settings, except: the per-IP limit is raised (so the bench is not a
    429 bench), and the generator on 127.0.0.1 is a trusted proxy, so the load generators'
    `X-Forwarded-For` spreads the load over `CLIENTS` — as traffic behind a reverse proxy
    comes from many clients. (From one address, one key of the in-memory moving window would
    hold every hit of the run's last minute: a cost of the bench, not of any real client
    mix.)"""
    del workdir  # everything else defaults to ./var under the working directory
    return clean_env(
        CHASER_AUTH_RATE_LIMIT_RESET_PER_IP="1000000/minute",
        CHASER_AUTH_TRUSTED_PROXIES=f"{HOST}/32",
        **extra,
    )


def start_chaser(
    name: str, workdir: Path, env: dict[str, str], serve_args: tuple[str, ...] = ()
) -> Server:
    port = free_port()
    # The operator listener (/metrics) on a free port too: two servers of one bench never meet
    # on the default 8001.
    env = {"CHASER_AUTH_OPERATOR_ADDRESS": f"{HOST}:{free_port()}", **env}
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


# --- load generation -----------------------------------------------------------------------

NAN = float("nan")


@dataclass(frozen=True)
class Load:
    """How every load-generator run of one bench run is made."""

    connections: int
    duration: float  # measured seconds
    warmup: float  # unmeasured seconds before, a separate generator run
    use_wrk: bool  # wrk (a Lua script for the POST bodies), else bench/loadgen.py
    max_requests: int = 300_000  # loadgen.py's cap per run
    path: str = RESET_REQUEST_PATH

    @property
    def generator(self) -> str:
        return "wrk" if self.use_wrk else "bench/loadgen.py"


def wrk_available(no_wrk: bool = False) -> bool:
    return not no_wrk and shutil.which("wrk") is not None


@dataclass
class Result:
    variant: str
    rps: float = NAN
    p50_ms: float = NAN
    p99_ms: float = NAN
    non2xx: int = 0
    errors: int = 0
    requests: int = 0
    rss_mb: float | None = None  # peak RSS (VmHWM), summed over the server's processes
    processes: int = 0  # how many processes that sum is over
    server_cpu: float = NAN  # % of one core, over the measured run, all server processes
    process_cpu: dict[int, float] = field(default_factory=dict)  # the same, by server pid
    gen_cpu: float = NAN
    other_cpu: float = NAN  # everything else on the machine, % of one core
    probe_cpu: dict[str, float] = field(default_factory=dict)  # named extra readings, %
    cpu_ms_per_req: float = NAN  # server CPU time / requests answered
    notes: list[str] = field(default_factory=list)


def wrk_script(bodies: list[str], path: Path) -> None:
    lines = ",\n".join("  [==[" + b + "]==]" for b in bodies)
    clients = ",".join(f'"{c}"' for c in CLIENTS)
    path.write_text(
        f"""local bodies = {{
{lines}
}}
local clients = {{{clients}}}
local i = 0
local j = 0
wrk.method = "POST"
request = function()
  i = i + 1
  if i > #bodies then i = 1 end
  j = j + 1
  if j > #clients then j = 1 end
  local headers = {{["Content-Type"] = "application/json", ["X-Forwarded-For"] = clients[j]}}
  return wrk.format(nil, nil, headers, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,'
    .. '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""
    )


def run_generator(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run a load generator to its end (killed after `timeout_s`). Its CPU time shows up in
    RUSAGE_CHILDREN once it has been reaped, which `drive` reads before and after."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        kill_quietly(proc)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def generate(
    port: int, body_file: Path, script: Path | None, load: Load, seconds: float
) -> dict[str, Any]:
    """One run of the load generator for `seconds`: wrk if `script`, else bench/loadgen.py.
    Returns requests/s, p50/p99 in ms, non-2xx and error counts, and a name."""
    if script is not None:
        url = f"http://{HOST}:{port}{load.path}"
        argv = ["wrk", "-t1", f"-c{load.connections}", "--timeout", "10s", "-s", str(script)]
        done = run_generator([*argv, f"-d{seconds:g}s", url], seconds + 15)
        match = re.search(r"^RESULT (\{.*\})$", done.stdout, re.MULTILINE)
        if done.returncode != 0 or match is None:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
        wrk = json.loads(match.group(1))
        errors = {k: wrk[k] for k in ("connect", "read", "write", "timeout") if wrk[k]}
        return {
            "generator": "wrk -t1 (Lua POST bodies)",
            "requests": wrk["requests"],
            "rps": wrk["requests"] / (wrk["duration_us"] / 1e6),
            "p50_ms": wrk["p50_us"] / 1000,
            "p99_ms": wrk["p99_us"] / 1000,
            "non2xx": wrk["status"],  # wrk counts statuses >= 400 here
            "errors": sum(errors.values()),
            "error_kinds": errors,
            "statuses": {},
        }
    argv = [
        str(PYTHON),
        str(BENCH_DIR / "loadgen.py"),
        *("--port", str(port), "--path", load.path, "--bodies", str(body_file)),
        *("--connections", str(load.connections), "--duration", str(seconds), "--warmup", "0"),
        *("--max-requests", str(load.max_requests)),
    ]
    done = run_generator(argv, seconds + 20)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr}")
    data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return data


def drive(
    server: Server,
    bodies: list[str],
    load: Load,
    workdir: Path,
    label: str,
    probes: Mapping[str, Callable[[], float]] | None = None,
) -> Result:
    """Warm up (one unmeasured generator run), then load the server for `load.duration` s
    with a second run. CPU is read around the measured run only: the server's (its process
    and all its descendants), the generator's, each of `probes` (name -> CPU seconds so far,
    e.g. `command_cpu_seconds("postgres")`), and the rest of the machine's."""
    probes = probes or {}
    result = Result(label)
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    body_file = workdir / f"bodies-{slug}.txt"
    body_file.write_text("\n".join(bodies) + "\n")
    script: Path | None = None
    if load.use_wrk:
        script = workdir / f"post-{slug}.lua"
        wrk_script(bodies, script)

    if load.warmup > 0:
        generate(server.port, body_file, script, load, load.warmup)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu0 = tree_cpu_by_pid(server.pid)
    probes0 = {name: probe() for name, probe in probes.items()}
    busy0 = system_busy_s()
    wall0 = time.monotonic()
    data = generate(server.port, body_file, script, load, load.duration)
    wall = time.monotonic() - wall0
    busy1 = system_busy_s()
    probed = {name: probe() - probes0[name] for name, probe in probes.items()}
    server_cpu1 = tree_cpu_by_pid(server.pid)
    server_cpu = sum(server_cpu1.values()) - sum(server_cpu0.values())
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    gen_cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)

    result.rps = data["rps"]
    result.p50_ms = data["p50_ms"]
    result.p99_ms = data["p99_ms"]
    result.non2xx = data["non2xx"]
    result.errors = data["errors"]
    result.requests = data["requests"]
    result.server_cpu = 100 * server_cpu / wall
    result.process_cpu = {
        member: 100 * (seconds - server_cpu0.get(member, 0.0)) / wall
        for member, seconds in server_cpu1.items()
    }
    result.gen_cpu = 100 * gen_cpu / wall
    result.probe_cpu = {name: 100 * seconds / wall for name, seconds in probed.items()}
    others = (busy1 - busy0) - server_cpu - gen_cpu - sum(probed.values())
    result.other_cpu = 100 * max(0.0, others) / wall
    result.cpu_ms_per_req = 1000 * server_cpu / data["requests"] if data["requests"] else NAN
    result.rss_mb, result.processes = tree_peak_rss_mb(server.pid)
    result.notes.append(f"generator: {data['generator']}, a separate process")
    if data["error_kinds"]:
        result.notes.append(f"generator errors: {data['error_kinds']}")
    if data["non2xx"] and data["statuses"]:
        result.notes.append(f"statuses: {data['statuses']}")
    return result


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or value != value else format(value, spec)  # NaN check


# --- PostgreSQL and Redis housekeeping (127.0.0.1 only) ------------------------------------

PG_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")  # what the benches name their databases


def pg_url(database: str, driver: str = "postgresql+asyncpg") -> str:
    """The URL of one database on the local server (trust auth, user postgres), by default as
    chaser-auth's setting takes it."""
    return f"{driver}://postgres@{HOST}:5432/{database}"


def _pg_ident(name: str) -> str:
    if not PG_NAME.fullmatch(name):
        raise ValueError(f"not a bench database name: {name!r}")
    return f'"{name}"'


async def _pg(database: str, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
    import asyncpg  # type: ignore[import-untyped]  # a project dependency, no stubs

    connection = await asyncpg.connect(pg_url(database, "postgresql"), timeout=10)
    try:
        return [tuple(row) for row in await connection.fetch(sql, *args)]
    finally:
        await connection.close()


def pg_query(database: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """All rows of one statement on `database` (asyncpg, a fresh connection; `$1`... are
    `args`). PostgreSQL counts it as two transactions of `database` (prepare, execute)."""
    return asyncio.run(_pg(database, sql, args))


def pg_create_database(name: str, template: str | None = None) -> None:
    """CREATE DATABASE `name` [TEMPLATE `template`] (nobody may be connected to the template)."""
    sql = f"CREATE DATABASE {_pg_ident(name)}"
    if template is not None:
        sql += f" TEMPLATE {_pg_ident(template)}"
    pg_query("postgres", sql)


def pg_drop_database(name: str) -> None:
    """DROP DATABASE IF EXISTS `name` WITH (FORCE): ends its sessions first."""
    pg_query("postgres", f"DROP DATABASE IF EXISTS {_pg_ident(name)} WITH (FORCE)")


def pg_outbox_counts(database: str) -> dict[str, int]:
    """Outbox rows by status."""
    rows = pg_query(database, "SELECT status, count(*) FROM outbox GROUP BY status")
    return {str(status): int(count) for status, count in sorted(rows)}


def pg_transactions(database: str, settle_s: float = 10.0) -> tuple[int, int] | None:
    """(commits, rollbacks) PostgreSQL has counted in `database`, once no session is connected
    to it any more (a backend flushes its counts when it exits; until then they may lag by up
    to 10 s); None if sessions remain after `settle_s`. Asked through the `postgres` database,
    so the question itself is not counted."""
    _pg_ident(database)
    deadline = time.monotonic() + settle_s
    sessions = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
    while pg_query("postgres", sessions, database)[0][0]:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)
    time.sleep(0.2)  # the last backend's counts reach the shared statistics as it exits
    rows = pg_query(
        "postgres",
        "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = $1",
        database,
    )
    return (int(rows[0][0]), int(rows[0][1])) if rows else None


def redis_delete_prefix(url: str, prefix: str) -> int:
    """Delete every key named `prefix:...` (the `limits` library's key format) in the Redis at
    `url`; returns how many. Refuses prefixes with glob characters."""
    import redis

    if not prefix or any(c in prefix for c in "*?[]\\"):
        raise ValueError(f"not a plain key prefix: {prefix!r}")
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        return len(keys)
    finally:
        client.close()


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
