"""Throughput of the seed endpoint, `POST /auth/password-reset/request`, against a ceiling.

One command, one run, the same server settings throughout (uvicorn, one process, the loop and
HTTP implementation uvicorn picks by itself, access log and server header off):

1. `bench/ceiling_app.py` (bare Starlette, parse JSON, answer) — the ceiling;
2. `chaser-auth serve` in a fresh temp dir, where accounts are created with `chaser-auth users
   create`; then, each on a fresh server and a fresh copy of that database, driven with
   addresses that have an account and with addresses that have none (and, with
   `--extra-variants`, unknown addresses with `serve --no-worker` and with
   `CHASER_AUTH_LOG_LEVEL=WARNING`).

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
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import (
    BENCH_DIR,
    HOST,
    PYTHON,
    Server,
    chaser_env,
    clean_env,
    cpu_seconds,
    create_accounts,
    free_port,
    kill_quietly,
    log_problems,
    outbox_counts,
    peak_rss_mb,
    start_chaser,
    start_server,
    stop,
    uvicorn_impl,
)

PATH = "/auth/password-reset/request"
MAX_PHASE_S = 10.0
NAN = float("nan")


@dataclass
class Result:
    variant: str
    rps: float = NAN
    p50_ms: float = NAN
    p99_ms: float = NAN
    non2xx: int = 0
    errors: int = 0
    rss_mb: float | None = None
    server_cpu: float = NAN  # % of one core, over the measured run
    gen_cpu: float = NAN
    other_cpu: float = NAN  # everything else on the machine, % of one core
    cpu_ms_per_req: float = NAN  # server CPU time / requests answered
    notes: list[str] = field(default_factory=list)


def system_busy_s() -> float:
    """Busy CPU seconds of the whole machine (all CPUs) since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wrk_script(bodies: list[str], path: Path) -> None:
    lines = ",\n".join("  [==[" + b + "]==]" for b in bodies)
    path.write_text(
        f"""local bodies = {{
{lines}
}}
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i + 1
  if i > #bodies then i = 1 end
  return wrk.format(nil, nil, nil, bodies[i])
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
    port: int, body_file: Path, script: Path | None, args: argparse.Namespace, seconds: float
) -> dict[str, Any]:
    """One run of the load generator for `seconds`: wrk if `script`, else bench/loadgen.py.
    Returns requests/s, p50/p99 in ms, non-2xx and error counts, and a name."""
    if script is not None:
        url = f"http://{HOST}:{port}{PATH}"
        argv = ["wrk", "-t1", f"-c{args.connections}", "--timeout", "10s", "-s", str(script)]
        done = run_generator([*argv, f"-d{seconds:g}s", url], seconds + 15)
        match = re.search(r"^RESULT (\{.*\})$", done.stdout, re.MULTILINE)
        if done.returncode != 0 or match is None:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
        data = json.loads(match.group(1))
        errors = {k: data[k] for k in ("connect", "read", "write", "timeout") if data[k]}
        return {
            "generator": "wrk -t1 (Lua POST bodies)",
            "requests": data["requests"],
            "rps": data["requests"] / (data["duration_us"] / 1e6),
            "p50_ms": data["p50_us"] / 1000,
            "p99_ms": data["p99_us"] / 1000,
            "non2xx": data["status"],  # wrk counts statuses >= 400 here
            "errors": sum(errors.values()),
            "error_kinds": errors,
            "statuses": {},
        }
    argv = [
        str(PYTHON),
        str(BENCH_DIR / "loadgen.py"),
        *("--port", str(port), "--path", PATH, "--bodies", str(body_file)),
        *("--connections", str(args.connections), "--duration", str(seconds), "--warmup", "0"),
        *("--max-requests", str(args.max_requests)),
    ]
    done = run_generator(argv, seconds + 20)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr}")
    data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return data


def drive(
    server: Server, bodies: list[str], args: argparse.Namespace, workdir: Path, label: str
) -> Result:
    """Warm up (one unmeasured generator run), then load the server for `args.duration` s
    with a second run; CPU of server, generator and the rest of the machine is read around
    the measured run only."""
    result = Result(label)
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    body_file = workdir / f"bodies-{slug}.txt"
    body_file.write_text("\n".join(bodies) + "\n")
    script: Path | None = None
    if shutil.which("wrk") is not None and not args.no_wrk:
        script = workdir / f"post-{slug}.lua"
        wrk_script(bodies, script)

    if args.warmup > 0:
        generate(server.port, body_file, script, args, args.warmup)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu0 = cpu_seconds(server.pid)
    busy0 = system_busy_s()
    wall0 = time.monotonic()
    data = generate(server.port, body_file, script, args, args.duration)
    wall = time.monotonic() - wall0
    busy1 = system_busy_s()
    server_cpu = cpu_seconds(server.pid) - server_cpu0
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    gen_cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)

    result.rps = data["rps"]
    result.p50_ms = data["p50_ms"]
    result.p99_ms = data["p99_ms"]
    result.non2xx = data["non2xx"]
    result.errors = data["errors"]
    result.server_cpu = 100 * server_cpu / wall
    result.gen_cpu = 100 * gen_cpu / wall
    result.other_cpu = 100 * max(0.0, (busy1 - busy0) - server_cpu - gen_cpu) / wall
    result.cpu_ms_per_req = 1000 * server_cpu / data["requests"] if data["requests"] else NAN
    result.rss_mb = peak_rss_mb(server.pid)
    result.notes.append(f"generator: {data['generator']}, a separate process")
    if data["error_kinds"]:
        result.notes.append(f"generator errors: {data['error_kinds']}")
    if data["non2xx"] and data["statuses"]:
        result.notes.append(f"statuses: {data['statuses']}")
    return result


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or value != value else format(value, spec)  # NaN check


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
    serve_args: tuple[str, ...] = (),
    **env_extra: str,
) -> Result:
    """A fresh `chaser-auth serve` on a fresh copy of the seeded database, driven once."""
    workdir = root / re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    shutil.copytree(template, workdir / "var")  # same accounts, empty outbox, fresh process
    server: Server | None = None
    try:
        server = start_chaser(label, workdir, chaser_env(workdir, **env_extra), serve_args)
        result = drive(server, bodies, args, workdir, label)
        counts = outbox_counts(workdir)
        time.sleep(args.drain_window)  # no load now: how fast does the worker catch up?
        later = outbox_counts(workdir)
    finally:
        code = stop(server)
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
        help="also run unknown addresses with `serve --no-worker` and with LOG_LEVEL=WARNING",
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
    generator = "wrk" if shutil.which("wrk") and not args.no_wrk else "bench/loadgen.py"
    print(
        f"seed throughput on {HOST}: {args.connections} connections, {args.warmup:g} s warm-up "
        f"+ {args.duration:g} s measured per variant, generator {generator}, uvicorn "
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
            results.append(drive(ceiling, unknown_bodies, args, root, "ceiling (bare Starlette)"))
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
        variants: list[tuple[str, list[str], tuple[str, ...], dict[str, str]]] = [
            ("chaser-auth existing addresses", existing_bodies, (), {}),
            ("chaser-auth unknown addresses", unknown_bodies, (), {}),
        ]
        if args.extra_variants:
            variants += [
                ("chaser-auth unknown, --no-worker", unknown_bodies, ("--no-worker",), {}),
                (
                    "chaser-auth unknown, LOG_LEVEL=WARN",
                    unknown_bodies,
                    (),
                    {"CHASER_AUTH_LOG_LEVEL": "WARNING"},
                ),
            ]
        for label, bodies, serve_args, env_extra in variants:
            results.append(
                chaser_phase(label, template, root, bodies, args, serve_args, **env_extra)
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
