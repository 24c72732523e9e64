"""Throughput of the reset request on PostgreSQL with 1, 2 and 4 API processes, against a ceiling.

One command, one run, the same load generator and settings throughout:

1. `bench/ceiling_app.py` (bare Starlette, one process) — the ceiling;
2. a database of its own on the local PostgreSQL (127.0.0.1:5432, user postgres, trust auth),
   `chaser_bench_<random>`: migrated with `chaser-auth migrate`, then ~200 accounts created in
   one process through the CLI's service call;
3. per process count N: a fresh database copied from that one (`CREATE DATABASE ... TEMPLATE`,
   so no outbox backlog carries over), Redis keys of the run's own prefix deleted (so the
   per-address mail limit starts afresh), `chaser-auth serve --workers N` with the embedded
   delivery worker on (the default) and the per-IP limit shared through Redis; driven with
   addresses that have an account; then the outbox is watched until the delivery workers have
   drained it (or `--drain-cap` seconds have passed).

Every database it made is dropped (`WITH (FORCE)`) and every Redis key of its prefix deleted
when it ends, however it ends. See bench/README.md.

    .venv/bin/python bench/postgres_scale.py [--duration 8] [--connections 64] [--processes 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _harness import (
    BENCH_DIR,
    CHASER,
    HOST,
    NAN,
    PYTHON,
    Load,
    Result,
    Server,
    chaser_env,
    clean_env,
    command_cpu_seconds,
    create_accounts_in_one_process,
    drive,
    fmt,
    free_port,
    log_problems,
    pg_create_database,
    pg_drop_database,
    pg_outbox_counts,
    pg_transactions,
    pg_url,
    process_tree,
    redis_delete_prefix,
    start_chaser,
    start_server,
    stop,
    system_busy_s,
    tree_cpu_seconds,
    tree_peak_rss_mb,
    uvicorn_impl,
    wait_for_log,
    wrk_available,
)

MAX_PHASE_S = 10.0
REDIS_URL = f"redis://{HOST}:6379/0"
READY_LINE = "Application startup complete."  # uvicorn logs it once per API process
PROBES = {
    "pg": lambda: command_cpu_seconds("postgres"),
    "redis": lambda: command_cpu_seconds("redis-server"),
}


@dataclass
class Backlog:
    """The outbox of one variant: when the load stopped, and after the drain."""

    worker: bool = True  # the embedded delivery worker ran (else nothing drains)
    at_stop: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    drain_s: float | None = None  # None: still rows queued at the cap (or no worker)
    own_queries: int = 0  # the bench's own queries on the database (2 transactions each)
    transactions: tuple[int, int] | None = None  # (commits, rollbacks) of the whole variant
    drain_cpu: dict[str, float] = field(default_factory=dict)  # % of one core while draining

    @property
    def handled(self) -> int:
        """Rows that left 'queued' between the two readings."""
        return self.at_stop.get("queued", 0) - self.after.get("queued", 0)

    @property
    def commits_per_row(self) -> float:
        """The server's commits (the bench's own subtracted) per outbox row."""
        rows = sum(self.after.values())
        if self.transactions is None or rows == 0:
            return NAN
        return (self.transactions[0] - 2 * self.own_queries) / rows


def process_counts(value: str) -> list[int]:
    try:
        counts = [int(part) for part in value.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {value}") from exc
    if not counts or any(n < 1 or n > 16 for n in counts):
        raise argparse.ArgumentTypeError("process counts must be 1..16")
    return list(dict.fromkeys(counts))  # each once, in the order given


def process_names(pid: int) -> dict[int, str]:
    """`pid` and its descendants: pid -> what it is (the summed RSS is over these)."""
    names = {}
    for member in process_tree(pid):
        try:
            argv = Path(f"/proc/{member}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        words = [w for w in argv.split("\0") if w]
        if "spawn_main" in argv:
            names[member] = "worker"
        elif "resource_tracker" in argv:
            names[member] = "resource tracker"
        else:
            names[member] = " ".join(Path(w).name for w in words[1:3])
    return names


def drain(database: str, cap: float, backlog: Backlog, server_pid: int) -> None:
    """Poll the outbox until no row is queued, at most `cap` seconds; and read the CPU time of
    the server's processes, of PostgreSQL and of the whole machine meanwhile."""
    readers = {"srv": lambda: tree_cpu_seconds(server_pid), **PROBES, "all": system_busy_s}
    cpu0 = {name: read() for name, read in readers.items()}
    started = time.monotonic()
    while True:
        backlog.after = pg_outbox_counts(database)
        backlog.own_queries += 1
        took = time.monotonic() - started
        if backlog.after.get("queued", 0) == 0:
            backlog.drain_s = took
            break
        if took >= cap:
            break
        time.sleep(0.2)
    if took > 0:
        backlog.drain_cpu = {
            name: 100 * (read() - cpu0[name]) / took for name, read in readers.items()
        }


def scale_phase(
    processes: int,
    database: str,
    root: Path,
    bodies: list[str],
    load: Load,
    redis_prefix: str,
    drain_cap: float,
    worker: bool,
) -> tuple[Result, Backlog]:
    """A fresh `chaser-auth serve --workers N` on `database`, driven once, then drained."""
    label = f"chaser-auth, {processes} process{'es' if processes > 1 else ''}"
    if not worker:
        label += ", no worker"
    workdir = root / f"p{processes}"
    workdir.mkdir()
    env = chaser_env(
        workdir,
        CHASER_AUTH_DATABASE_URL=pg_url(database),
        CHASER_AUTH_REDIS_URL=REDIS_URL,
        CHASER_AUTH_REDIS_KEY_PREFIX=redis_prefix,
    )
    server: Server | None = None
    backlog = Backlog(worker)
    try:
        serve_args = ("--workers", str(processes), *(() if worker else ("--no-worker",)))
        server = start_chaser(label, workdir, env, serve_args)
        if not wait_for_log(workdir / "server.log", READY_LINE, processes, 60):
            raise RuntimeError(
                f"{label}: {processes} x {READY_LINE!r} not logged within 60 s; see "
                f"{workdir / 'server.log'}"
            )
        load_average = os.getloadavg()[0]
        result = drive(server, bodies, load, workdir, label, PROBES)
        result.notes.append(f"load average {load_average:.2f} before the warm-up")
        backlog.at_stop = backlog.after = pg_outbox_counts(database)
        backlog.own_queries += 1
        if backlog.worker:
            drain(database, drain_cap, backlog, server.pid)
        rss, count = tree_peak_rss_mb(server.pid)  # after the drain: the peak of the whole run
        result.rss_mb, result.processes = rss, count
        names = process_names(server.pid)
        result.notes.append(
            "CPU of each process during the measured run, % of one core: "
            + ", ".join(
                f"{names.get(pid, '?')} {pid} {cpu:.0f}"
                for pid, cpu in sorted(result.process_cpu.items())
            )
        )
    finally:
        code = stop(server, grace=30)
    backlog.transactions = pg_transactions(database)
    problems = {k: v for k, v in log_problems(workdir / "server.log").items() if v}
    mails = len(list((workdir / "var" / "mail").glob("*.eml")))
    result.notes.append(
        f".eml files written {mails}; server log problems {problems or 'none'}; exit status {code}"
    )
    return result, backlog


def print_table(results: list[Result], ceiling: float) -> None:
    head = (
        f"{'variant':<34} {'OS procs':>8} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'non-2xx/err':>11} {'peak RSS MB':>11} {'vs ceiling':>10} {'srv CPU%':>8} "
        f"{'CPU ms/req':>10} {'pg CPU%':>7} {'redis CPU%':>10} {'gen CPU%':>8} {'other CPU%':>10}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        ratio = r.rps / ceiling if ceiling == ceiling and ceiling > 0 else NAN
        print(
            f"{r.variant:<34} {r.processes:>8} {fmt(r.rps, '.0f'):>7} {fmt(r.p50_ms, '.2f'):>8} "
            f"{fmt(r.p99_ms, '.2f'):>8} {f'{r.non2xx}/{r.errors}':>11} "
            f"{fmt(r.rss_mb, '.1f'):>11} {fmt(ratio, '.4f'):>10} {fmt(r.server_cpu, '.0f'):>8} "
            f"{fmt(r.cpu_ms_per_req, '.3f'):>10} {fmt(r.probe_cpu.get('pg'), '.0f'):>7} "
            f"{fmt(r.probe_cpu.get('redis'), '.0f'):>10} {fmt(r.gen_cpu, '.0f'):>8} "
            f"{fmt(r.other_cpu, '.0f'):>10}"
        )


def print_outbox(rows: list[tuple[Result, Backlog]], drain_cap: float) -> None:
    head = (
        f"{'variant':<34} {'accepted':>8} {'outbox when the load stopped':<30} "
        f"{'drained in':>10} {'handled/s':>9} {'commits/row':>11} {'drain CPU% srv/pg/all':>21}"
        "  outbox after"
    )
    print(head)
    print("-" * len(head))
    for result, backlog in rows:
        took = backlog.drain_s
        if not backlog.worker:
            drained, rate = "no worker", "n/a"
        else:
            window = drain_cap if took is None else took
            drained = f">{drain_cap:g} s" if took is None else f"{took:.1f} s"
            rate = fmt(backlog.handled / window if window > 0 else NAN, ".0f")
        cpu = "/".join(fmt(backlog.drain_cpu.get(k), ".0f") for k in ("srv", "pg", "all"))
        if not backlog.drain_cpu:
            cpu = "n/a"
        print(
            f"{result.variant:<34} {result.requests:>8} {json.dumps(backlog.at_stop):<30} "
            f"{drained:>10} {rate:>9} {fmt(backlog.commits_per_row, '.2f'):>11} {cpu:>21}  "
            f"{json.dumps(backlog.after)}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--processes",
        type=process_counts,
        default=[1, 2, 4],
        help="API process counts to run, comma-separated (default 1,2,4)",
    )
    parser.add_argument("--accounts", type=int, default=200, help="accounts to create")
    parser.add_argument(
        "--drain-cap",
        type=float,
        default=120.0,
        help="stop watching the outbox drain after this many seconds (default 120)",
    )
    parser.add_argument("--max-requests", type=int, default=300_000, help="loadgen cap per run")
    parser.add_argument("--no-wrk", action="store_true", help="use loadgen.py even if wrk exists")
    parser.add_argument(
        "--no-worker",
        action="store_true",
        help="serve --no-worker: the request path alone, nothing drains (a diagnostic)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temp dir (logs, mail); the databases and Redis keys are removed anyway",
    )
    args = parser.parse_args()
    if args.warmup + args.duration > MAX_PHASE_S or args.duration <= 0 or args.warmup < 0:
        parser.error(f"need 0 < --duration, 0 <= --warmup, sum at most {MAX_PHASE_S:g} s")
    if args.accounts < 1 or args.drain_cap < 0:
        parser.error("need --accounts >= 1 and --drain-cap >= 0")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the `finally` blocks run

    started = time.monotonic()
    suffix = secrets.token_hex(4)
    seed_db = f"chaser_bench_{suffix}"
    redis_prefix = f"bench-{suffix}"
    made: list[str] = []  # databases to drop, whatever happens
    load = Load(
        args.connections, args.duration, args.warmup, wrk_available(args.no_wrk), args.max_requests
    )
    root = Path(tempfile.mkdtemp(prefix="chaser-pg-bench-"))
    print(
        f"PostgreSQL scale-out on {HOST}: {args.connections} connections, {args.warmup:g} s "
        f"warm-up + {args.duration:g} s measured per variant, generator {load.generator}, "
        f"uvicorn {uvicorn_impl()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f}; database {seed_db}, Redis prefix {redis_prefix}",
        flush=True,
    )
    results: list[Result] = []
    outboxes: list[tuple[Result, Backlog]] = []
    try:
        rng = random.Random(20261127)
        unknown = [f"nobody-{rng.getrandbits(48):012x}@example.net" for _ in range(10_000)]
        ceiling: Server | None = None
        try:
            port = free_port()
            argv = [str(PYTHON), str(BENCH_DIR / "ceiling_app.py"), "--host", HOST]
            ceiling = start_server(
                "ceiling",
                [*argv, "--port", str(port)],
                port,
                root,
                clean_env(),
                root / "ceiling.log",
            )
            bodies = [json.dumps({"email": e}) for e in unknown]
            results.append(drive(ceiling, bodies, load, root, "ceiling (bare Starlette)", PROBES))
        finally:
            stop(ceiling)
        print(f"  ceiling done at {time.monotonic() - started:.0f} s", flush=True)

        seed_dir = root / "seed"
        seed_dir.mkdir()
        made.append(seed_db)
        pg_create_database(seed_db)
        seed_env = chaser_env(
            seed_dir,
            CHASER_AUTH_DATABASE_URL=pg_url(seed_db),
            CHASER_AUTH_REDIS_URL=REDIS_URL,
            CHASER_AUTH_REDIS_KEY_PREFIX=redis_prefix,
            CHASER_AUTH_LOG_LEVEL="WARNING",
        )
        migrated = subprocess.run(
            [str(CHASER), "migrate"], cwd=seed_dir, env=seed_env, capture_output=True, timeout=120
        )
        if migrated.returncode != 0:
            raise RuntimeError(f"migrate failed: {migrated.stderr.decode(errors='replace')}")
        emails = [f"bench-user-{i:03d}@example.com" for i in range(args.accounts)]
        created, took = create_accounts_in_one_process(seed_dir, seed_env, emails)
        print(
            f"  migrated {seed_db} and created {created} accounts in {took:.1f} s (one process, "
            f"the CLI's service call)",
            flush=True,
        )
        existing = [json.dumps({"email": e}) for e in emails] * (10_000 // len(emails) + 1)
        rng.shuffle(existing)

        for processes in args.processes:
            database = f"{seed_db}_p{processes}"
            made.append(database)
            pg_create_database(database, template=seed_db)  # same accounts, empty outbox
            redis_delete_prefix(REDIS_URL, redis_prefix)  # per-address mail limits start afresh
            result, backlog = scale_phase(
                processes,
                database,
                root,
                existing,
                load,
                redis_prefix,
                args.drain_cap,
                not args.no_worker,
            )
            results.append(result)
            outboxes.append((result, backlog))
            pg_drop_database(database)
            print(f"  {result.variant} done at {time.monotonic() - started:.0f} s", flush=True)

        print()
        print_table(results, results[0].rps)
        print()
        print_outbox(outboxes, args.drain_cap)
        for r in results:
            for note in r.notes:
                print(f"  [{r.variant}] {note}")
        print(
            "\nOS procs = processes the peak RSS is summed over (the serve process and all its "
            "descendants: with --workers N > 1, uvicorn's master, N workers and the "
            "multiprocessing helpers); peak RSS = sum of their VmHWM, read after the drain "
            "(shared pages count once per process).\n"
            "srv CPU% = CPU of those processes during the measured run, pg CPU% = of every "
            "postgres process on the machine (with the backends that exited), redis CPU% = of "
            "redis-server, gen CPU% = of the load generator, other CPU% = everything else; "
            f"in % of one core ({100 * (os.cpu_count() or 1)}% on this machine). CPU ms/req = "
            "server CPU per answered request.  non-2xx/err: answers that were not 2xx (wrk: "
            ">= 400) / connect, read, write errors and timeouts.\n"
            "accepted = requests answered during the measured run; the outbox also holds the "
            "warm-up's rows. drained in = from the end of the load until no row was queued; "
            "handled/s = rows that left 'queued' during that time / that time. commits/row = "
            "transactions PostgreSQL committed in the variant's database from the server's "
            "start to its stop (pg_stat_database, read once its sessions are gone; the bench's "
            "own queries subtracted) / outbox rows. drain CPU% = CPU of the server's processes, of "
            "PostgreSQL and of the whole machine while it drained, % of one core."
        )
        print(f"total bench time {time.monotonic() - started:.0f} s")
    finally:
        for database in reversed(made):
            try:
                pg_drop_database(database)
            except Exception as exc:  # noqa: BLE001 - report, and go on cleaning up
                print(f"could not drop database {database}: {exc}", file=sys.stderr)
        try:
            removed = redis_delete_prefix(REDIS_URL, redis_prefix)
            print(f"dropped {len(made)} databases; deleted {removed} Redis keys {redis_prefix}:*")
        except Exception as exc:  # noqa: BLE001
            print(f"could not delete Redis keys {redis_prefix}:*: {exc}", file=sys.stderr)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
