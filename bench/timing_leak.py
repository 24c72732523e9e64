"""Does the reset request endpoint's answer time tell whether an account exists?

Against a fresh `chaser-auth serve` (per-IP limit set out of the way), one keep-alive
connection sends `POST /auth/password-reset/request` one request at a time: `--existing`
requests for addresses that have an account (spread evenly over `--accounts` accounts) and
`--unknown` for addresses that have none, interleaved in a random order, after an unmeasured
warm-up. The per-address limit (3 mails per address per hour) is left at its default: it
silently suppresses every request after the third for an account, which is part of the test —
the answer must not differ then either.

Printed: the median time of each group, the difference of the medians (µs and %), the
Mann-Whitney U two-sided p-value (`_harness.mann_whitney_u`: scipy if importable, else the
normal approximation with tie correction), whether status, body and header names were
identical, and two secondary splits: by the kind of the *previous* request (the delivery
worker handles request i while request i+1 is being answered), and existing addresses that
were mailed vs suppressed.

    .venv/bin/python bench/timing_leak.py [--existing 2000] [--unknown 2000] [--accounts 100]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from _harness import (
    HOST,
    VOLATILE_HEADERS,
    Server,
    chaser_env,
    create_accounts_in_one_process,
    log_problems,
    mann_whitney_u,
    outbox_counts,
    query_db,
    read_response,
    start_chaser,
    stop,
    uvicorn_impl,
)

PATH = "/auth/password-reset/request"


@dataclass
class Sample:
    kind: str  # "existing" | "unknown"
    ns: int
    status: int
    body_sha: str
    header_names: tuple[bytes, ...]
    header_sha: str  # of the header lines other than VOLATILE_HEADERS
    mailed: bool  # existing only: one of the first 3 requests for its account
    previous: str | None
    position: int  # index in the measured sequence


def request_bytes(email: str, port: int) -> bytes:
    body = json.dumps({"email": email}).encode()
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def run_sequence(
    port: int,
    plan: list[tuple[str, str, bool]],
    warmup: list[str],
    max_seconds: float,
    gap_s: float = 0.0,
) -> tuple[list[Sample], bool]:
    """Send `warmup` (unrecorded) then `plan` one at a time on one keep-alive connection,
    waiting `gap_s` after each answer."""
    samples: list[Sample] = []
    buffer = bytearray()
    deadline = time.monotonic() + max_seconds
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for email in warmup:
            sock.sendall(request_bytes(email, port))
            read_response(sock, buffer)
        previous: str | None = None
        for kind, email, mailed in plan:
            if time.monotonic() > deadline:
                return samples, False
            payload = request_bytes(email, port)
            started = time.perf_counter_ns()
            sock.sendall(payload)
            head, body = read_response(sock, buffer)
            elapsed = time.perf_counter_ns() - started
            lines = head.split(b"\r\n")
            headers = [line.partition(b":") for line in lines[1:]]
            stable = b"\n".join(
                line
                for line, (n, _, _) in zip(lines[1:], headers, strict=True)
                if n.strip().lower() not in VOLATILE_HEADERS
            )
            samples.append(
                Sample(
                    kind=kind,
                    ns=elapsed,
                    status=int(lines[0].split()[1]),
                    body_sha=hashlib.sha256(body).hexdigest()[:16],
                    header_names=tuple(n.strip().lower() for n, _, _ in headers),
                    header_sha=hashlib.sha256(stable).hexdigest()[:16],
                    mailed=mailed,
                    previous=previous,
                    position=len(samples),
                )
            )
            previous = kind
            if gap_s:
                time.sleep(gap_s)
    return samples, True


def describe(label: str, values_ns: list[int]) -> str:
    us = sorted(v / 1000 for v in values_ns)
    if not us:
        return f"{label:<38} n=0"
    q = statistics.quantiles(us, n=10) if len(us) > 1 else [us[0]] * 9
    return (
        f"{label:<38} n={len(us):>5}  median {statistics.median(us):9.1f} µs  "
        f"p10 {q[0]:9.1f}  p90 {q[8]:9.1f}  mean {statistics.fmean(us):9.1f}"
    )


def compare(label: str, a_ns: list[int], b_ns: list[int], a_name: str, b_name: str) -> None:
    if not a_ns or not b_ns:
        print(f"{label}: not enough samples")
        return
    ma = statistics.median(a_ns) / 1000
    mb = statistics.median(b_ns) / 1000
    u, p, method = mann_whitney_u([float(v) for v in a_ns], [float(v) for v in b_ns])
    print(
        f"{label}: median({a_name}) - median({b_name}) = {ma - mb:+.1f} µs "
        f"({100 * (ma - mb) / mb:+.2f}% of {b_name}); Mann-Whitney U = {u:.0f}, "
        f"P({a_name} slower) = {u / (len(a_ns) * len(b_ns)):.3f}, two-sided p = {p:.3g} "
        f"[{method}]"
    )


def audit_counts(workdir: Path) -> dict[str, int]:
    try:
        rows = query_db(workdir, "SELECT event, count(*) FROM audit_events GROUP BY event")
    except sqlite3.Error as exc:
        return {f"error: {exc}": 0}
    return {str(e): int(c) for e, c in rows}


def time_matched(targets: list[Sample], pool: list[Sample]) -> list[Sample]:
    """For each target, the not yet taken sample of `pool` nearest to it in the sequence, so
    that a comparison is not confounded by drift over the run (the 1st-3rd request for each
    account fall mostly early in it)."""
    free = sorted(pool, key=lambda s: s.position)
    taken: set[int] = set()
    matched = []
    for target in targets:
        best = min(
            (s for s in free if s.position not in taken),
            key=lambda s: abs(s.position - target.position),
            default=None,
        )
        if best is not None:
            taken.add(best.position)
            matched.append(best)
    return matched


def analyse(samples: list[Sample]) -> None:
    ex = [s.ns for s in samples if s.kind == "existing"]
    un = [s.ns for s in samples if s.kind == "unknown"]
    print(describe("existing addresses", ex))
    print(describe("unknown addresses", un))
    compare("SAME REQUEST", ex, un, "existing", "unknown")

    answers: Counter[tuple[object, ...]] = Counter()
    for s in samples:
        answers[(s.kind, s.status, s.body_sha, s.header_names, s.header_sha)] += 1
    distinct = {key[1:] for key in answers}
    print(
        f"answers: {len(distinct)} distinct (status, body, header names, header values other "
        f"than date/x-request-id) over both groups; statuses "
        f"{dict(Counter(s.status for s in samples))}"
    )

    print("\nsecondary splits (descriptive; the p-values are not corrected for doing several):")
    after_ex = [s.ns for s in samples if s.previous == "existing"]
    after_un = [s.ns for s in samples if s.previous == "unknown"]
    print(describe("after an existing-address request", after_ex))
    print(describe("after an unknown-address request", after_un))
    compare("NEXT REQUEST", after_ex, after_un, "after existing", "after unknown")
    mailed = [s for s in samples if s.kind == "existing" and s.mailed]
    suppressed = [s.ns for s in samples if s.kind == "existing" and not s.mailed]
    matched = time_matched(mailed, [s for s in samples if s.kind == "unknown"])
    print(describe("existing, mailed (1st-3rd/account)", [s.ns for s in mailed]))
    print(describe("unknown, nearest in sequence to those", [s.ns for s in matched]))
    print(describe("existing, suppressed (4th+/account)", suppressed))
    compare(
        "MAILED vs TIME-MATCHED UNKNOWN",
        [s.ns for s in mailed],
        [s.ns for s in matched],
        "mailed",
        "matched unknown",
    )
    quarter = max(1, len(samples) // 4)
    drift = [
        statistics.median(s.ns for s in samples[i * quarter : (i + 1) * quarter]) / 1000
        for i in range(4)
        if samples[i * quarter : (i + 1) * quarter]
    ]
    print("drift: median of each quarter of the run, µs: " + ", ".join(f"{d:.0f}" for d in drift))
    logs = [math.log(s.ns) for s in samples]
    mean = statistics.fmean(logs)
    var = sum((v - mean) ** 2 for v in logs) or 1.0
    auto = [
        sum((logs[i] - mean) * (logs[i + lag] - mean) for i in range(len(logs) - lag)) / var
        for lag in (1, 2, 5)
    ]
    print(
        "autocorrelation of log(latency) at lag 1, 2, 5: "
        + ", ".join(f"{a:+.3f}" for a in auto)
        + " (Mann-Whitney assumes independent samples; clearly non-zero values make its "
        "p-values too small)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--existing", type=int, default=2000, help="requests, known addresses")
    parser.add_argument("--unknown", type=int, default=2000, help="requests, unknown addresses")
    parser.add_argument("--accounts", type=int, default=100, help="accounts to spread them over")
    parser.add_argument("--warmup", type=int, default=100, help="unrecorded requests first")
    parser.add_argument(
        "--max-seconds", type=float, default=150.0, help="cap on the measured run (seconds)"
    )
    parser.add_argument("--seed", type=int, default=20261127, help="of the random order")
    parser.add_argument(
        "--no-worker",
        action="store_true",
        help="serve with --no-worker: the request path alone, no delivery worker in-process",
    )
    parser.add_argument(
        "--gap-ms",
        type=float,
        default=0.0,
        help="pause after each answer (lets the worker finish before the next request)",
    )
    parser.add_argument("--dump", type=Path, help="write every sample to this CSV file")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, db)")
    args = parser.parse_args()
    if args.accounts < 50 or args.existing < 1 or args.unknown < 1:
        parser.error("need --accounts >= 50 and at least one request of each kind")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the `finally` blocks run

    started = time.monotonic()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="chaser-timing-"))
    print(
        f"timing leak on {HOST}: {args.existing} existing + {args.unknown} unknown requests, "
        f"random order, one keep-alive connection, {args.warmup} warm-up requests first; "
        f"uvicorn {uvicorn_impl()}; load average {os.getloadavg()[0]:.2f}"
        f"{'; serve --no-worker' if args.no_worker else ''}"
        f"{f'; {args.gap_ms:g} ms pause after each answer' if args.gap_ms else ''}",
        flush=True,
    )
    server: Server | None = None
    try:
        env = chaser_env(root)
        server = start_chaser("chaser-auth", root, env, ("--no-worker",) if args.no_worker else ())
        # Same length and domain for both kinds, so the bodies differ only in a few letters.
        wanted = [f"acct-{i:05d}@example.com" for i in range(args.accounts)]
        count, took = create_accounts_in_one_process(root, env, wanted)
        accounts = wanted[:count]
        print(
            f"  created {count} accounts in {took:.1f} s (one process, the CLI's service call)",
            flush=True,
        )
        plan: list[tuple[str, str, bool]] = []
        seen: Counter[str] = Counter()
        existing = [accounts[i % len(accounts)] for i in range(args.existing)]
        unknown = [f"none-{i:05d}@example.com" for i in range(args.unknown)]
        order = [("existing", e) for e in existing] + [("unknown", e) for e in unknown]
        rng.shuffle(order)
        for kind, email in order:
            seen[email] += 1
            plan.append((kind, email, kind == "existing" and seen[email] <= 3))
        warmup = [f"warm-{i:05d}@example.com" for i in range(args.warmup)]
        t0 = time.monotonic()
        samples, complete = run_sequence(
            server.port, plan, warmup, args.max_seconds, args.gap_ms / 1000
        )
        run_s = time.monotonic() - t0
        time.sleep(1.5)  # let the worker catch up a little
        code = stop(server)  # graceful: the worker finishes the batch it holds
        server = None
        outbox = outbox_counts(root)
        audit = audit_counts(root)

        mails = len(list((root / "var" / "mail").glob("*.eml")))
        problems = {k: v for k, v in log_problems(root / "server.log").items() if v}
        print(
            f"\n{len(samples)} requests in {run_s:.1f} s ({len(samples) / run_s:.0f}/s, warm-up "
            f"included in the time){'' if complete else ' — STOPPED at --max-seconds'}"
        )
        analyse(samples)
        print(
            f"\nserver side: outbox {outbox}; .eml files {mails} (at most 3 x {count} accounts);"
            f" audit events {audit}; server log problems {problems or 'none'}; exit status "
            f"{code} (-15: uvicorn re-raises SIGTERM after its graceful shutdown)"
        )
        print(
            "(the per-address limit, 3 mails per address per hour, suppressed every existing-"
            "address request after the third for its account — 'reset_suppressed' above. The "
            "client is not told, and the answer must not differ.)"
        )
        if args.dump:
            with args.dump.open("w") as out:
                out.write("position,kind,ns,status,mailed,previous\n")
                for s in samples:
                    out.write(
                        f"{s.position},{s.kind},{s.ns},{s.status},{int(s.mailed)},"
                        f"{s.previous or ''}\n"
                    )
            print(f"samples written to {args.dump}")
        print(f"total bench time {time.monotonic() - started:.0f} s")
    finally:
        stop(server)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
