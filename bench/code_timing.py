"""Does the one-time code exchange's answer time tell whether an address has an account?

Against a fresh `chaser-auth serve` (temporary directory, SQLite, the embedded worker), every one
of `--accounts` accounts is sent a reset mail (so each holds a live link and code), then one
keep-alive connection sends `POST /auth/password-reset/code` one request at a time, in a random
order, after an unmeasured warm-up:

  (known)   an address with an account and a live code, with a wrong code   -> 400 invalid_code
  (unknown) an address with no account (any code)                           -> 400 invalid_code

Each address gets `--tries` tries (default 4: under the per-code limit of 5, so every known
try meets a live code, and under the per-address budget of 10 an hour, which stays at its
default and so is counted in the database for both groups). Known and unknown addresses have
the same length. Only the per-client token budget is raised, so no answer is a 429.

Printed: per group n, median, p10 and p90; the ratio of the medians known/unknown (and of the
p10s and p90s), the Mann-Whitney U two-sided p-value (`_harness.mann_whitney_u`), and whether
every answer was the same status, body and headers (but `date` and `x-request-id`).

    .venv/bin/python bench/code_timing.py [--accounts 300] [--tries 4]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
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

from _harness import (
    HOST,
    VOLATILE_HEADERS,
    Server,
    chaser_env,
    create_accounts_in_one_process,
    log_problems,
    mann_whitney_u,
    read_response,
    start_chaser,
    stop,
    uvicorn_impl,
)

PATH = "/auth/password-reset/code"
CODE = re.compile(rb"enter this code with your email address:\s+(\d{4}) (\d{4})")


@dataclass
class Sample:
    kind: str  # "known" | "unknown"
    ns: int
    answer: tuple[int, str, str]  # status, body digest, digest of the stable header lines


def post(sock: socket.socket, buffer: bytearray, port: int, path: str, payload: dict) -> tuple:
    body = json.dumps(payload).encode()
    sock.sendall(
        (
            f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
    )
    return read_response(sock, buffer)


def answer_of(head: bytes, body: bytes) -> tuple[int, str, str]:
    lines = head.split(b"\r\n")
    stable = b"\n".join(
        line
        for line in lines[1:]
        if line.partition(b":")[0].strip().lower() not in VOLATILE_HEADERS
    )
    return (
        int(lines[0].split()[1]),
        hashlib.sha256(body).hexdigest()[:16],
        hashlib.sha256(stable).hexdigest()[:16],
    )


def mailed_codes(mail_dir: Path, wanted: int, timeout: float) -> dict[str, str]:
    """The code mailed to each address, from the `.eml` files the worker writes."""
    deadline = time.monotonic() + timeout
    while len(files := list(mail_dir.glob("*.eml"))) < wanted and time.monotonic() < deadline:
        time.sleep(0.2)
    codes = {}
    for path in files:
        raw = path.read_bytes()
        to = re.search(rb"^To: (\S+)", raw, re.MULTILINE)
        found = CODE.search(raw)
        if to and found:
            codes[to.group(1).decode()] = (found.group(1) + found.group(2)).decode()
    return codes


def describe(label: str, values_ns: list[int]) -> str:
    us = sorted(v / 1000 for v in values_ns)
    q = statistics.quantiles(us, n=10)
    return (
        f"{label:<9} n={len(us):>5}  median {statistics.median(us):8.1f} µs  "
        f"p10 {q[0]:8.1f}  p90 {q[8]:8.1f}"
    )


def ratio(a_ns: list[int], b_ns: list[int], at: int) -> float:
    return statistics.quantiles(a_ns, n=10)[at] / statistics.quantiles(b_ns, n=10)[at]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--accounts", type=int, default=300, help="known addresses")
    parser.add_argument("--tries", type=int, default=4, help="tries at each address (1-4)")
    parser.add_argument("--warmup", type=int, default=100, help="unrecorded requests first")
    parser.add_argument("--seed", type=int, default=20261207, help="of the random order")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, db)")
    args = parser.parse_args()
    if args.accounts < 20 or not 1 <= args.tries <= 4:
        parser.error("need --accounts >= 20 and --tries from 1 to 4")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the `finally` block runs
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="chaser-code-timing-"))
    print(
        f"code exchange timing on {HOST}: {args.accounts} known + {args.accounts} unknown "
        f"addresses, {args.tries} tries each, random order, one keep-alive connection; "
        f"uvicorn {uvicorn_impl()}; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    server: Server | None = None
    try:
        env = chaser_env(root, CHASER_AUTH_RATE_LIMIT_TOKEN_PER_IP="1000000/minute")  # noqa: S106
        server = start_chaser("chaser-auth", root, env)
        wanted = [f"acct-{i:05d}@example.com" for i in range(args.accounts)]
        count, _ = create_accounts_in_one_process(root, env, wanted)
        known = wanted[:count]
        buffer = bytearray()
        with socket.create_connection((HOST, server.port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for email in known:
                post(sock, buffer, server.port, "/auth/password-reset/request", {"email": email})
            codes = mailed_codes(root / "var" / "mail", len(known), timeout=120)
            known = [email for email in known if email in codes]
            print(f"  {len(known)} accounts hold a live code from their mail", flush=True)

            def wrong(email: str) -> str:
                right = int(codes[email])
                return f"{(right + rng.randrange(1, 10**8)) % 10**8:08d}"

            unknown = [f"none-{i:05d}@example.com" for i in range(len(known))]
            plan = [("known", e, wrong(e)) for e in known for _ in range(args.tries)]
            plan += [("unknown", e, f"{rng.randrange(10**8):08d}") for e in unknown] * args.tries
            rng.shuffle(plan)
            for i in range(args.warmup):
                post(
                    sock,
                    buffer,
                    server.port,
                    PATH,
                    {"email": f"warm-{i:05d}@example.com", "code": "12345678"},
                )
            samples: list[Sample] = []
            for kind, email, code in plan:
                started = time.perf_counter_ns()
                head, body = post(sock, buffer, server.port, PATH, {"email": email, "code": code})
                elapsed = time.perf_counter_ns() - started
                samples.append(Sample(kind, elapsed, answer_of(head, body)))
        stop(server)
        server = None

        k = [s.ns for s in samples if s.kind == "known"]
        u = [s.ns for s in samples if s.kind == "unknown"]
        print(describe("known", k))
        print(describe("unknown", u))
        _, p, method = mann_whitney_u([float(v) for v in k], [float(v) for v in u])
        print(
            f"known / unknown: median {statistics.median(k) / statistics.median(u):.3f}, "
            f"p10 {ratio(k, u, 0):.3f}, p90 {ratio(k, u, 8):.3f}; Mann-Whitney two-sided "
            f"p = {p:.3g} [{method}]"
        )
        answers = Counter(s.answer for s in samples)
        print(
            f"answers: {len(answers)} distinct (status, body, headers but date/x-request-id) "
            f"over both groups; statuses {dict(Counter(s.answer[0] for s in samples))}"
        )
        problems = {k: v for k, v in log_problems(root / "server.log").items() if v}
        print(f"server log problems: {problems or 'none'}")
    finally:
        stop(server)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
