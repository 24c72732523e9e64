"""Does the login endpoint's answer time tell whether an account exists?

Against a fresh `chaser-auth serve` (temporary directory, SQLite, production argon2 cost:
t=3, m=64 MiB, p=4), one keep-alive connection sends `POST /auth/login` one request at a time,
in a random order, `--samples` of each of four groups:

  (a) an existing account with a wrong password           -> 401 invalid_credentials
  (b) an address without an account (any password)        -> 401 invalid_credentials
  (c) an existing account with its right password         -> 200 (for information only)
  (d) an existing account whose stored hash has older, cheaper argon2 parameters (t=2,
      m=19 MiB, p=1, OWASP's minimum), wrong password     -> 401 invalid_credentials

The login service verifies a dummy argon2 hash when there is no account, so (a) and (b) should
cost the same; (c) also opens a session (one more write transaction); for (d) the service tops
the cheaper verification up to the configured work, so (d) should cost what (b) costs too.

Then the login budgets' 429s: the server is stopped and a second one started on the same
database with `CHASER_AUTH_RATE_LIMIT_LOGIN_PER_ACCOUNT=1/hour`. One wrong-password attempt at
each of `--limited-accounts` accounts and as many unknown addresses (401s) spends their budget;
after that every login at those addresses answers 429, and `--limited-samples` of each are
sent in a random order:

  (e) an existing account whose budget is spent (wrong password)  -> 429 rate_limited
  (f) an address without an account whose budget is spent         -> 429 rate_limited

Printed: per group n, median, p90 and p99 in ms; median(a) - median(b), median(d) - median(b)
and median(e) - median(f) in ms and %, each with the Mann-Whitney U two-sided p-value (same
test as timing_leak.py); whether the answers of each pair were the same bytes apart from
`date`/`x-request-id` (and, for the 429s, `retry-after`/`x-ratelimit-reset`, which count from
the first attempt at the address). Exits 1 if any answer had another status than expected.

Settings of the first server: everything default except the login limits
`CHASER_AUTH_RATE_LIMIT_LOGIN` (failures per account + client), `..._LOGIN_PER_IP` and
`..._LOGIN_PER_ACCOUNT` raised to 1000000 per window (and the reset per-IP limit `chaser_env`
raises), so no request of (a)-(d) meets a 429. The second server has the same settings but the
per-account one. (a) and (c) go round-robin over `--accounts` accounts, (d) over as many
accounts of its own and (b) over as many addresses without one, all of the same length.

Accounts are created in one process at the server's production argon2 cost
(`create_accounts_in_one_process(..., production_cost=True)`), those of (d) at the older cost;
the stored hashes are checked in the database before anything is measured.

    .venv/bin/python bench/login_timing.py [--samples 500] [--accounts 100] [--warmup 20]
        [--limited-samples 1000] [--limited-accounts 20]
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
    "d": ("older cheaper hash, wrong password", 401),
    "e": ("existing account, budget spent", 429),
    "f": ("unknown account, budget spent", 429),
}
# The older, cheaper cost of (d): OWASP Password Storage Cheat Sheet's minimum for argon2id.
OLDER_COST = (2, 19456, 1)
RAISED = "1000000/minute"
# A 429's Retry-After and X-RateLimit-Reset count from the first attempt at the address.
LIMITED_VOLATILE = VOLATILE_HEADERS | {b"retry-after", b"x-ratelimit-reset"}


@dataclass
class Sample:
    group: str  # a key of GROUPS
    ns: int
    status: int
    answer: str  # hash of status, body and header lines other than the volatile ones


def request_bytes(email: str, password: str, port: int) -> bytes:
    body = json.dumps({"email": email, "password": password}).encode()
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def answer_hash(head: bytes, body: bytes, volatile: set[bytes]) -> tuple[int, str]:
    """(status, hash of the status line, the header lines other than `volatile`, body)."""
    lines = head.split(b"\r\n")
    stable = [line for line in lines[1:] if line.partition(b":")[0].strip().lower() not in volatile]
    digest = hashlib.sha256(b"\n".join([lines[0], *stable, b"", body])).hexdigest()[:16]
    return int(lines[0].split()[1]), digest


def run_sequence(
    port: int,
    warmup: list[tuple[str, str, str]],
    plan: list[tuple[str, str, str]],
    volatile: set[bytes],
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
            status, _ = answer_hash(*read_response(sock, buffer), volatile)
            warm_statuses[(group, status)] += 1
        for group, email, password in plan:
            payload = request_bytes(email, password, port)
            started = time.perf_counter_ns()
            sock.sendall(payload)
            head, body = read_response(sock, buffer)
            elapsed = time.perf_counter_ns() - started
            status, answer = answer_hash(head, body, volatile)
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


def cost_env(cost: tuple[int, int, int]) -> dict[str, str]:
    return {
        "CHASER_AUTH_ARGON2_TIME_COST": str(cost[0]),
        "CHASER_AUTH_ARGON2_MEMORY_COST": str(cost[1]),
        "CHASER_AUTH_ARGON2_PARALLELISM": str(cost[2]),
    }


def print_table(samples: list[Sample]) -> None:
    print(f"{'group':<42} {'n':>5} {'median ms':>10} {'p90 ms':>9} {'p99 ms':>9}")
    print("-" * 79)
    for group, (label, _) in GROUPS.items():
        ms = sorted(s.ns / 1e6 for s in samples if s.group == group)
        if not ms:
            print(f"({group}) {label:<38} {0:>5}")
            continue
        print(
            f"({group}) {label:<38} {len(ms):>5} {statistics.median(ms):>10.3f} "
            f"{pct(ms, 90):>9.3f} {pct(ms, 99):>9.3f}"
        )


def compare(samples: list[Sample], x: str, y: str, volatile: str) -> None:
    """Median difference, Mann-Whitney U and identical answers of groups `x` and `y`."""
    a = [float(s.ns) for s in samples if s.group == x]
    b = [float(s.ns) for s in samples if s.group == y]
    if not a or not b:
        print(f"\n({x}) vs ({y}): not enough samples")
        return
    ma, mb = statistics.median(a) / 1e6, statistics.median(b) / 1e6
    u, p, method = mann_whitney_u(a, b)
    print(
        f"\n({x}) vs ({y}): median({x}) - median({y}) = {ma - mb:+.3f} ms "
        f"({100 * (ma - mb) / mb:+.2f}% of {y}); Mann-Whitney U = {u:.0f}, "
        f"P({x} slower) = {u / (len(a) * len(b)):.3f}, two-sided p = {p:.3g} [{method}]"
    )
    answers = {g: {s.answer for s in samples if s.group == g} for g in (x, y)}
    same = len(answers[x]) == 1 and answers[x] == answers[y]
    print(
        f"({x}) and ({y}) answers: {len(answers[x] | answers[y])} distinct (status, body, "
        f"header lines other than {volatile}) — {'identical' if same else 'NOT identical'}"
    )


def unexpected_statuses(
    statuses: Counter[tuple[str, int]], expected: dict[str, int]
) -> dict[tuple[str, int], int]:
    return {k: v for k, v in statuses.items() if k[1] != expected[k[0]]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--samples", type=int, default=500, help="measured requests per group (a)-(d)"
    )
    parser.add_argument(
        "--accounts",
        type=int,
        default=100,
        help="accounts of (a)/(c), of (d), and unknown addresses of (b), each",
    )
    parser.add_argument(
        "--warmup", type=int, default=20, help="unrecorded requests of each group, first"
    )
    parser.add_argument(
        "--limited-samples", type=int, default=1000, help="measured 429s per group (e), (f)"
    )
    parser.add_argument(
        "--limited-accounts",
        type=int,
        default=20,
        help="accounts (and as many unknown addresses) whose budget the 429 phase spends",
    )
    parser.add_argument("--seed", type=int, default=20261127, help="of the random order")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, db)")
    args = parser.parse_args()
    if min(args.samples, args.accounts, args.limited_samples, args.limited_accounts) < 1 or (
        args.warmup < 0
    ):
        parser.error("need --samples, --accounts, --limited-* >= 1 and --warmup >= 0")
    if args.limited_accounts > args.accounts:
        parser.error("need --limited-accounts <= --accounts")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the `finally` blocks run

    started = time.monotonic()
    rng = random.Random(args.seed)
    cost = production_cost()
    root = Path(tempfile.mkdtemp(prefix="chaser-login-"))
    print(
        f"login timing on {HOST}: {args.samples} requests per group (a)-(d), 4 groups in random "
        f"order, then {args.limited_samples} per 429 group (e), (f) against a second server; "
        f"one keep-alive connection; argon2id t={cost[0]} m={cost[1]} KiB p={cost[2]} "
        f"(production default), (d) t={OLDER_COST[0]} m={OLDER_COST[1]} KiB "
        f"p={OLDER_COST[2]}; uvicorn {uvicorn_impl()}; load average {os.getloadavg()[0]:.2f}",
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
        # Same length and domain for every kind, so the bodies differ only in a few letters.
        wanted = [f"acct-{i:05d}@example.com" for i in range(args.accounts)]
        count, took = create_accounts_in_one_process(root, env, wanted, production_cost=True)
        accounts = wanted[:count]
        # The older cost through the same service call: the environment sets the cost, and
        # `production_cost=True` keeps the environment's.
        wanted_old = [f"olds-{i:05d}@example.com" for i in range(args.accounts)]
        count_old, took_old = create_accounts_in_one_process(
            root, {**env, **cost_env(OLDER_COST)}, wanted_old, production_cost=True
        )
        older = wanted_old[:count_old]
        unknown = [f"none-{i:05d}@example.com" for i in range(count)]
        costs = hash_costs(root)
        if costs != Counter({cost: count, OLDER_COST: count_old}):
            raise RuntimeError(f"stored hash costs, not as created: {dict(costs)}")
        print(
            f"  created {count} accounts in {took:.1f} s and {count_old} at the older cost in "
            f"{took_old:.1f} s (one process each, the CLI's service call); stored hashes: "
            f"{count} at the production cost, {count_old} at the older one",
            flush=True,
        )

        def group_requests(n: int, offset: int = 0) -> list[tuple[str, str, str]]:
            items = [("a", accounts[(offset + i) % count], WRONG_PASSWORD) for i in range(n)]
            items += [("b", unknown[(offset + i) % count], WRONG_PASSWORD) for i in range(n)]
            items += [("d", older[(offset + i) % count_old], WRONG_PASSWORD) for i in range(n)]
            return items

        warm = group_requests(args.warmup)
        warm += [("c", accounts[i % count], PASSWORD) for i in range(args.warmup)]
        rng.shuffle(warm)
        plan = group_requests(args.samples)
        plan += [("c", accounts[i % count], PASSWORD) for i in range(args.samples)]
        rng.shuffle(plan)
        t0 = time.monotonic()
        samples, warm_statuses = run_sequence(server.port, warm, plan, VOLATILE_HEADERS)
        run_s = time.monotonic() - t0
        code = stop(server)
        server = None
        problems = {k: v for k, v in log_problems(root / "server.log").items() if v}
        (root / "server.log").rename(root / "server-budgets-raised.log")
        expected = {g: status for g, (_, status) in GROUPS.items()}
        statuses: Counter[tuple[str, int]] = Counter((s.group, s.status) for s in samples)
        statuses += warm_statuses
        unexpected = unexpected_statuses(statuses, expected)
        print(
            f"\n{len(samples)} measured requests in {run_s:.1f} s ({len(samples) / run_s:.1f}/s, "
            f"{len(warm)} warm-up requests included in the time); statuses (warm-up included) "
            f"{dict(sorted(statuses.items()))}; unexpected {unexpected or 'none'}; server log "
            f"problems {problems or 'none'}; exit status {code}",
            flush=True,
        )

        # Second server: the per-account budget at 1 per hour.
        limited_env = {**env, "CHASER_AUTH_RATE_LIMIT_LOGIN_PER_ACCOUNT": "1/hour"}
        server = start_chaser("chaser-auth", root, limited_env)
        n = args.limited_accounts
        spend = [("e", email, WRONG_PASSWORD) for email in accounts[:n]]
        spend += [("f", email, WRONG_PASSWORD) for email in unknown[:n]]
        rng.shuffle(spend)
        warm_limited = [("e", accounts[i % n], WRONG_PASSWORD) for i in range(args.warmup)]
        warm_limited += [("f", unknown[i % n], WRONG_PASSWORD) for i in range(args.warmup)]
        rng.shuffle(warm_limited)
        limited_plan = [("e", accounts[i % n], WRONG_PASSWORD) for i in range(args.limited_samples)]
        limited_plan += [("f", unknown[i % n], WRONG_PASSWORD) for i in range(args.limited_samples)]
        rng.shuffle(limited_plan)
        t0 = time.monotonic()
        _, spend_statuses = run_sequence(server.port, spend, [], LIMITED_VOLATILE)
        limited, limited_statuses = run_sequence(
            server.port, warm_limited, limited_plan, LIMITED_VOLATILE
        )
        limited_s = time.monotonic() - t0
        code_limited = stop(server)
        server = None
        limited_statuses += Counter((s.group, s.status) for s in limited)
        # Each address's first attempt spends its budget: a 401; every later one a 429.
        unexpected_limited = unexpected_statuses(spend_statuses, {"e": 401, "f": 401})
        unexpected_limited.update(unexpected_statuses(limited_statuses, expected))
        problems_limited = {k: v for k, v in log_problems(root / "server.log").items() if v}
        print(
            f"{len(limited)} measured 429 requests in {limited_s:.1f} s, after {len(spend)} "
            f"budget-spending attempts and {len(warm_limited)} warm-up requests, included in "
            f"the time; statuses of the spending attempts {dict(sorted(spend_statuses.items()))}"
            f", of the rest (warm-up included) {dict(sorted(limited_statuses.items()))}; "
            f"unexpected "
            f"{unexpected_limited or 'none'}; server log problems {problems_limited or 'none'}; "
            f"exit status {code_limited} (-15: uvicorn re-raises SIGTERM after its graceful "
            f"shutdown)\n"
        )
        errors = sum(unexpected.values()) + sum(unexpected_limited.values())

        print_table(samples + limited)
        stable = "date/x-request-id"
        compare(samples, "a", "b", stable)
        compare(samples, "d", "b", stable)
        compare(limited, "e", "f", f"{stable}/retry-after/x-ratelimit-reset")
        print(f"\ntotal bench time {time.monotonic() - started:.0f} s")
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
