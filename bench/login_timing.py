"""Does the login endpoint's answer time tell whether an account exists?

Against a fresh `chaser-auth serve` (temporary directory, SQLite, production argon2 cost:
t=3, m=64 MiB, p=4), one keep-alive connection sends `POST /auth/login` one request at a time,
in a random order, `--samples` of each of three groups:

  (a) an existing account with a wrong password           -> 401 invalid_credentials
  (b) an address without an account (any password)        -> 401 invalid_credentials
  (c) an existing account with its right password         -> 200 (for information only)

The login service verifies a dummy argon2 hash when there is no account, so (a) and (b) should
cost the same; (c) also opens a session (one more write transaction). Printed: per group n,
median, p90 and p99 in ms; median(a) - median(b) in ms and %; the Mann-Whitney U two-sided
p-value (same test as timing_leak.py); whether the (a) and (b) answers were the same bytes
apart from `date`/`x-request-id`. Exits 1 if any answer had another status than expected.

Settings: everything default except the login limits `CHASER_AUTH_RATE_LIMIT_LOGIN` (failures
per account + client), `..._LOGIN_PER_IP` and `..._LOGIN_PER_ACCOUNT`, raised to 1000000 per
window (and the reset per-IP limit `chaser_env` raises), so no request meets a 429. (a) and (c)
go round-robin over `--accounts` accounts and (b) over as many addresses without one, of the
same length, so both failing groups put the same number of hits on the same number of keys.

Accounts are created in one process at the server's production argon2 cost
(`create_accounts_in_one_process(..., production_cost=True)`, ~0.15 s per account); the stored
hashes are checked in the database before anything is measured, so (a) verifies a
production-cost hash just like (b)'s dummy.

    .venv/bin/python bench/login_timing.py --samples 500 [--accounts 100] [--warmup 20]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import argon2
from _harness import (
    HOST,
    PASSWORD,
    VOLATILE_HEADERS,
    Server,
    chaser_env,
    create_accounts_in_one_process,
    log_problems,
    mann_whitney_u,
    pct,
    query_db,
    read_response,
    start_chaser,
    stop,
    uvicorn_impl,
)

from chaser_auth.config import Settings

PATH = "/auth/login"
WRONG_PASSWORD = "correct horse battery staple 8"  # noqa: S105 - same length as PASSWORD
GROUPS = {
    "a": ("existing account, wrong password", 401),
    "b": ("unknown account", 401),
    "c": ("existing account, right password", 200),
}
RAISED = "1000000/minute"


@dataclass
class Sample:
    group: str  # "a" | "b" | "c"
    ns: int
    status: int
    answer: str  # hash of status, body and header lines other than VOLATILE_HEADERS


def request_bytes(email: str, password: str, port: int) -> bytes:
    body = json.dumps({"email": email, "password": password}).encode()
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def answer_hash(head: bytes, body: bytes) -> tuple[int, str]:
    """(status, hash of the status line, the header lines other than VOLATILE_HEADERS, body)."""
    lines = head.split(b"\r\n")
    stable = [
        line
        for line in lines[1:]
        if line.partition(b":")[0].strip().lower() not in VOLATILE_HEADERS
    ]
    digest = hashlib.sha256(b"\n".join([lines[0], *stable, b"", body])).hexdigest()[:16]
    return int(lines[0].split()[1]), digest


def run_sequence(
    port: int, warmup: list[tuple[str, str, str]], plan: list[tuple[str, str, str]]
) -> tuple[list[Sample], Counter[tuple[str, int]]]:
    """Send `warmup` (not recorded, statuses counted) then `plan`, one request at a time on one
    keep-alive connection. Each item is (group, email, password)."""
    samples: list[Sample] = []
    warm_statuses: Counter[tuple[str, int]] = Counter()
    buffer = bytearray()
    with socket.create_connection((HOST, port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for group, email, password in warmup:
            sock.sendall(request_bytes(email, password, port))
            status, _ = answer_hash(*read_response(sock, buffer))
            warm_statuses[(group, status)] += 1
        for group, email, password in plan:
            payload = request_bytes(email, password, port)
            started = time.perf_counter_ns()
            sock.sendall(payload)
            head, body = read_response(sock, buffer)
            elapsed = time.perf_counter_ns() - started
            status, answer = answer_hash(head, body)
            samples.append(Sample(group, elapsed, status, answer))
    return samples, warm_statuses


def hash_costs(workdir: Path) -> Counter[tuple[int, int, int]]:
    """(time cost, memory cost KiB, parallelism) of the stored password hashes (read-only)."""
    costs: Counter[tuple[int, int, int]] = Counter()
    for (stored,) in query_db(workdir, "SELECT password_hash FROM users"):
        p = argon2.extract_parameters(stored)
        costs[(p.time_cost, p.memory_cost, p.parallelism)] += 1
    return costs


def production_cost() -> tuple[int, int, int]:
    fields = Settings.model_fields
    return (
        int(fields["argon2_time_cost"].default),
        int(fields["argon2_memory_cost"].default),
        int(fields["argon2_parallelism"].default),
    )


def print_table(samples: list[Sample]) -> None:
    print(f"{'group':<40} {'n':>5} {'median ms':>10} {'p90 ms':>9} {'p99 ms':>9}")
    print("-" * 77)
    for group, (label, _) in GROUPS.items():
        ms = sorted(s.ns / 1e6 for s in samples if s.group == group)
        if not ms:
            print(f"({group}) {label:<36} {0:>5}")
            continue
        print(
            f"({group}) {label:<36} {len(ms):>5} {statistics.median(ms):>10.2f} "
            f"{pct(ms, 90):>9.2f} {pct(ms, 99):>9.2f}"
        )


def compare(samples: list[Sample]) -> None:
    a = [float(s.ns) for s in samples if s.group == "a"]
    b = [float(s.ns) for s in samples if s.group == "b"]
    if not a or not b:
        print("(a) vs (b): not enough samples")
        return
    ma, mb = statistics.median(a) / 1e6, statistics.median(b) / 1e6
    u, p, method = mann_whitney_u(a, b)
    print(
        f"\n(a) vs (b): median(a) - median(b) = {ma - mb:+.3f} ms ({100 * (ma - mb) / mb:+.2f}% "
        f"of b); Mann-Whitney U = {u:.0f}, P(a slower) = {u / (len(a) * len(b)):.3f}, "
        f"two-sided p = {p:.3g} [{method}]"
    )
    answers = {g: {s.answer for s in samples if s.group == g} for g in ("a", "b")}
    same = len(answers["a"]) == 1 and answers["a"] == answers["b"]
    print(
        f"(a) and (b) answers: {len(answers['a'] | answers['b'])} distinct (status, body, "
        f"header lines other than date/x-request-id) — "
        f"{'identical' if same else 'NOT identical'}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=500, help="measured requests per group")
    parser.add_argument(
        "--accounts", type=int, default=100, help="accounts (and as many unknown addresses)"
    )
    parser.add_argument(
        "--warmup", type=int, default=20, help="unrecorded (a) and (b) requests each, first"
    )
    parser.add_argument("--seed", type=int, default=20261127, help="of the random order")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, db)")
    args = parser.parse_args()
    if args.samples < 1 or args.accounts < 1 or args.warmup < 0:
        parser.error("need --samples >= 1, --accounts >= 1 and --warmup >= 0")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the `finally` blocks run

    started = time.monotonic()
    rng = random.Random(args.seed)
    cost = production_cost()
    root = Path(tempfile.mkdtemp(prefix="chaser-login-"))
    print(
        f"login timing on {HOST}: {args.samples} requests per group, 3 groups in random order, "
        f"one keep-alive connection; argon2id t={cost[0]} m={cost[1]} KiB p={cost[2]} "
        f"(production default); uvicorn {uvicorn_impl()}; load average "
        f"{os.getloadavg()[0]:.2f}",
        flush=True,
    )
    server: Server | None = None
    errors = 0
    try:
        env = chaser_env(
            root,
            CHASER_AUTH_RATE_LIMIT_LOGIN=RAISED,
            CHASER_AUTH_RATE_LIMIT_LOGIN_PER_IP=RAISED,
            CHASER_AUTH_RATE_LIMIT_LOGIN_PER_ACCOUNT=RAISED,
        )
        server = start_chaser("chaser-auth", root, env)
        # Same length and domain for both kinds, so the bodies differ only in a few letters.
        wanted = [f"acct-{i:05d}@example.com" for i in range(args.accounts)]
        count, took = create_accounts_in_one_process(root, env, wanted, production_cost=True)
        accounts = wanted[:count]
        unknown = [f"none-{i:05d}@example.com" for i in range(count)]
        costs = hash_costs(root)
        if costs != Counter({cost: count}):
            raise RuntimeError(f"stored hash costs, not all at the production cost: {dict(costs)}")
        print(
            f"  created {count} accounts in {took:.1f} s (one process, the CLI's service call); "
            f"all {count} stored hashes at the production cost",
            flush=True,
        )

        warm = [("a", accounts[i % count], WRONG_PASSWORD) for i in range(args.warmup)]
        warm += [("b", unknown[i % count], WRONG_PASSWORD) for i in range(args.warmup)]
        rng.shuffle(warm)

        plan = [("a", accounts[i % count], WRONG_PASSWORD) for i in range(args.samples)]
        plan += [("b", unknown[i % count], WRONG_PASSWORD) for i in range(args.samples)]
        plan += [("c", accounts[i % count], PASSWORD) for i in range(args.samples)]
        rng.shuffle(plan)
        t0 = time.monotonic()
        samples, warm_statuses = run_sequence(server.port, warm, plan)
        run_s = time.monotonic() - t0
        code = stop(server)
        server = None

        print(
            f"\n{len(samples)} measured requests in {run_s:.1f} s ({len(samples) / run_s:.1f}/s, "
            f"{2 * args.warmup} warm-up requests included in the time)\n"
        )
        print_table(samples)
        compare(samples)
        statuses: Counter[tuple[str, int]] = Counter((s.group, s.status) for s in samples)
        statuses += warm_statuses
        unexpected = {k: v for k, v in statuses.items() if k[1] != GROUPS[k[0]][1]}
        errors = sum(unexpected.values())
        problems = {k: v for k, v in log_problems(root / "server.log").items() if v}
        print(
            f"\nstatuses (warm-up included) {dict(sorted(statuses.items()))}; unexpected "
            f"{unexpected or 'none'}; server log problems {problems or 'none'}; exit status "
            f"{code} (-15: uvicorn re-raises SIGTERM after its graceful shutdown)"
        )
        print(f"total bench time {time.monotonic() - started:.0f} s")
    finally:
        stop(server)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if errors:
        print(f"ERROR: {errors} answers with an unexpected status", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
