"""Throughput of the reset request endpoint, `POST /auth/password-reset/request`, against a ceiling.

One command, one run, the same server settings throughout (uvicorn, one process, the loop and
HTTP implementation uvicorn picks by itself, access log and server header off):

1. `bench/ceiling_app.py` (bare Starlette, parse JSON, answer) — the ceiling;
2. `chaser-auth serve` in a fresh temp dir, where accounts are created with `chaser-auth users
   create`; then, each on a fresh server and a fresh copy of that database, driven with
   addresses that have an account and with addresses that have none, and with existing
   addresses on two processes (`serve --workers 2`) (and, with
   `--extra-variants`, unknown addresses with `serve --no-worker` and with
   `CHASER_AUTH_LOG_LEVEL=WARNING`, and existing addresses with the delivery worker as a
   process of its own: `serve --no-worker` beside `chaser-auth worker` on the same file).

Load: `wrk` (Lua script for the POST bodies) if it is on PATH, else `bench/loadgen.py`; either
way a separate process with `--connections` keep-alive connections, whose CPU time is
measured (RUSAGE_CHILDREN) and printed next to the server's, so a saturated generator would
show. See bench/README.md.

    .venv/bin/python bench/seed_throughput.py [--duration 8] [--connections 64]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _harness import (
    BENCH_DIR,
    CHASER,
    HOST,
    PYTHON,
    Load,
    Result,
    Server,
    chaser_env,
    clean_env,
    cpu_seconds,
    create_accounts,
    drive,
    fmt,
    free_port,
    kill_quietly,
    log_problems,
    outbox_counts,
    peak_rss_mb,
    start_chaser,
    start_server,
    stop,
    uvicorn_impl,
    wrk_available,
)

MAX_PHASE_S = 10.0
NAN = float("nan")


def print_table(results: list[Result], ceiling: float) -> None:
    head = (
        f"{'variant':<36} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx/err':>11} "
        f"{'peak RSS MB':>11} {'vs ceiling':>10} {'srv CPU%':>8} {'CPU ms/req':>10} "
        f"{'gen CPU%':>8} {'other CPU%':>10}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        ratio = r.rps / ceiling if ceiling == ceiling and ceiling > 0 else NAN
        print(
            f"{r.variant:<36} {fmt(r.rps, '.0f'):>7} {fmt(r.p50_ms, '.2f'):>8} "
            f"{fmt(r.p99_ms, '.2f'):>8} {f'{r.non2xx}/{r.errors}':>11} "
            f"{fmt(r.rss_mb, '.1f'):>11} {fmt(ratio, '.4f'):>10} {fmt(r.server_cpu, '.0f'):>8} "
            f"{fmt(r.cpu_ms_per_req, '.3f'):>10} {fmt(r.gen_cpu, '.0f'):>8} "
            f"{fmt(r.other_cpu, '.0f'):>10}"
        )
    for r in results:
        for note in r.notes:
            print(f"  [{r.variant}] {note}")


def chaser_phase(
    label: str,
    template: Path,
    root: Path,
    bodies: list[str],
    args: argparse.Namespace,
    load: Load,
    serve_args: tuple[str, ...] = (),
    side_worker: bool = False,
    **env_extra: str,
) -> Result:
    """A fresh `chaser-auth serve` on a fresh copy of the seeded database, driven once; with
    `side_worker`, `chaser-auth worker` beside it (for `serve --no-worker`), its CPU time read
    as a probe, i.e. not in the server's columns."""
    workdir = root / re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    shutil.copytree(template, workdir / "var")  # same accounts, empty outbox, fresh process
    server: Server | None = None
    worker: subprocess.Popen[bytes] | None = None
    worker_rss: float | None = None
    env = chaser_env(workdir, **env_extra)
    try:
        server = start_chaser(label, workdir, env, serve_args)
        probes: dict[str, Callable[[], float]] = {}
        if side_worker:
            with (workdir / "worker.log").open("wb") as worker_log:
                worker = subprocess.Popen(
                    [str(CHASER), "worker"],
                    cwd=workdir,
                    # Its operator listener on a port of its own, never the default 8001.
                    env={**env, "CHASER_AUTH_OPERATOR_ADDRESS": f"{HOST}:{free_port()}"},
                    stdout=worker_log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            pid = worker.pid
            probes["worker"] = lambda: cpu_seconds(pid)
        result = drive(server, bodies, load, workdir, label, probes)
        counts = outbox_counts(workdir)
        time.sleep(args.drain_window)  # no load now: how fast does the worker catch up?
        later = outbox_counts(workdir)
        if worker is not None:
            worker_rss = peak_rss_mb(worker.pid)
    finally:
        code = stop(server)
        kill_quietly(worker)
    if worker is not None:
        worker_cpu = result.probe_cpu.get("worker", NAN)
        per_request = 10 * (result.server_cpu + worker_cpu) / result.rps if result.rps else NAN
        problems = {k: v for k, v in log_problems(workdir / "worker.log").items() if v}
        result.notes.append(
            f"`chaser-auth worker` beside it: {fmt(worker_cpu, '.0f')}% of one core (not in "
            f"srv CPU%); server + worker {fmt(per_request, '.3f')} CPU ms/req; worker peak RSS "
            f"{fmt(worker_rss, '.1f')} MB; worker log problems {problems or 'none'}"
        )
    problems = {k: v for k, v in log_problems(workdir / "server.log").items() if v}
    mails = len(list((workdir / "var" / "mail").glob("*.eml")))
    drained = later.get("done", 0) - counts.get("done", 0)
    result.notes.append(
        f"outbox when the load stopped: {counts} (queued = accepted requests the delivery "
        f"worker had not handled yet); {args.drain_window:g} s later, with no load: {later} "
        f"({drained / args.drain_window:.0f} handled/s)"
    )
    result.notes.append(
        f".eml files written {mails}; server log problems {problems or 'none'}; exit status "
        f"{code} (-15: uvicorn re-raises SIGTERM after its graceful shutdown)"
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--accounts", type=int, default=200, help="accounts to create (at most)")
    parser.add_argument(
        "--accounts-budget",
        type=float,
        default=50.0,
        help="start no new `users create` after this many seconds (default 50)",
    )
    parser.add_argument("--max-requests", type=int, default=300_000, help="loadgen cap per run")
    parser.add_argument(
        "--drain-window",
        type=float,
        default=4.0,
        help="seconds to watch the outbox drain after each chaser-auth load (default 4)",
    )
    parser.add_argument("--no-wrk", action="store_true", help="use loadgen.py even if wrk exists")
    parser.add_argument(
        "--extra-variants",
        action="store_true",
        help="also run unknown addresses with `serve --no-worker` and with LOG_LEVEL=WARNING, "
        "and existing addresses with the worker as a process of its own",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, db)")
    args = parser.parse_args()
    if args.warmup + args.duration > MAX_PHASE_S or args.duration <= 0 or args.warmup < 0:
        parser.error(f"need 0 < --duration, 0 <= --warmup, sum at most {MAX_PHASE_S:g} s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the `finally` blocks run

    started = time.monotonic()
    rng = random.Random(20261127)
    unknown = [f"nobody-{rng.getrandbits(48):012x}@example.net" for _ in range(10_000)]
    unknown_bodies = [json.dumps({"email": e}) for e in unknown]
    root = Path(tempfile.mkdtemp(prefix="chaser-bench-"))
    load = Load(
        args.connections, args.duration, args.warmup, wrk_available(args.no_wrk), args.max_requests
    )
    print(
        f"seed throughput on {HOST}: {args.connections} connections, {args.warmup:g} s warm-up "
        f"+ {args.duration:g} s measured per variant, generator {load.generator}, uvicorn "
        f"{uvicorn_impl()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results: list[Result] = []
    try:
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
            results.append(drive(ceiling, unknown_bodies, load, root, "ceiling (bare Starlette)"))
        finally:
            stop(ceiling)
        print(f"  ceiling done at {time.monotonic() - started:.0f} s", flush=True)

        # chaser-auth: one server to create the accounts on, then a fresh copy per variant
        seed_dir = root / "seed"
        seed_dir.mkdir()
        server: Server | None = None
        try:
            server = start_chaser("chaser-auth (seed)", seed_dir, chaser_env(seed_dir))
            wanted = [f"bench-user-{i:03d}@example.com" for i in range(args.accounts)]
            created, took = create_accounts(
                seed_dir, chaser_env(seed_dir), wanted, os.cpu_count() or 2, args.accounts_budget
            )
        finally:
            stop(server)
        if not created:
            print("no account could be created; see the errors above", file=sys.stderr)
            return 1
        print(
            f"  created {len(created)} of {args.accounts} accounts with `chaser-auth users "
            f"create` in {took:.1f} s ({os.cpu_count()} at a time; stops starting new ones "
            f"after {args.accounts_budget:g} s)",
            flush=True,
        )
        existing_bodies = [json.dumps({"email": e}) for e in created] * (10_000 // len(created) + 1)
        rng.shuffle(existing_bodies)
        template = seed_dir / "var"
        Variant = tuple[str, list[str], tuple[str, ...], bool, dict[str, str]]
        variants: list[Variant] = [
            ("chaser-auth existing addresses", existing_bodies, (), False, {}),
            ("chaser-auth unknown addresses", unknown_bodies, (), False, {}),
            ("chaser-auth existing, --workers 2", existing_bodies, ("--workers", "2"), False, {}),
        ]
        if args.extra_variants:
            variants += [
                ("chaser-auth unknown, --no-worker", unknown_bodies, ("--no-worker",), False, {}),
                (
                    "chaser-auth unknown, LOG_LEVEL=WARN",
                    unknown_bodies,
                    (),
                    False,
                    {"CHASER_AUTH_LOG_LEVEL": "WARNING"},
                ),
                (
                    "chaser-auth existing, worker process",
                    existing_bodies,
                    ("--no-worker",),
                    True,
                    {},
                ),
            ]
        for label, bodies, serve_args, side_worker, env_extra in variants:
            results.append(
                chaser_phase(
                    label, template, root, bodies, args, load, serve_args, side_worker, **env_extra
                )
            )
            print(f"  {label} done at {time.monotonic() - started:.0f} s", flush=True)

        print()
        print_table(results, results[0].rps)
        ceiling_result = results[0]
        print(
            f"\nThe generator is not what limits the ceiling: during it the generator process "
            f"used {ceiling_result.gen_cpu:.0f}% of one core and the ceiling server "
            f"{ceiling_result.server_cpu:.0f}% (of {100 * (os.cpu_count() or 1)}% on this "
            "machine); chaser-auth answers far below that rate.\n"
            "srv CPU% / gen CPU% / other CPU% = CPU time of the server process (all its "
            "threads), of the generator process, and of everything else on the machine during "
            "the measured run, in % of one core; CPU ms/req = server CPU time per answered "
            "request.  non-2xx/err: answers that were not 2xx (wrk: >= 400) / connect, read, "
            "write errors and timeouts."
        )
        print(f"total bench time {time.monotonic() - started:.0f} s")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
