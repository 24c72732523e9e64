"""Request → SMTP receipt latency of the reset request, `POST /auth/password-reset/request`.

An in-process aiosmtpd server records when each message arrives (`time.time()` as its DATA is
received), with its To and Message-ID. `chaser-auth serve` (embedded SQLite, in-process
delivery worker: the defaults) sends to it through `CHASER_AUTH_SMTP_URL`, with the per-IP
limit set out of the way. Every measured request is for an account of its own, so each one
sends exactly one mail (the per-address limit, 3/hour, is never reached) and is matched to its
message by recipient. Time = from just before the request's first byte is sent to the
arrival of its message. Two variants, each on a fresh server and a fresh copy of the same
database:

1. **idle**: one request at a time on one keep-alive connection; the next is sent once the
   previous one's mail has arrived (or timed out);
2. **under load**: while wrk (or `loadgen.py`) drives the reset request with unknown addresses
   on `--connections` connections for `--duration` s, as in `seed_throughput.py`, the measured
   requests go out on a schedule, evenly spread over the load, taking turns on 4 keep-alive
   connections of their own (one request at a time on each), without waiting for their mail.

Printed per variant: n, p50/p90/p99/max latency in ms, messages lost (answered 200, but no
mail within `--timeout`), and the outbox at the end. See bench/README.md.

    .venv/bin/python bench/delivery_latency.py [--samples 200] [--duration 8]
        [--connections 64] [--timeout 30] [--no-wrk] [--keep]
"""

from __future__ import annotations

import argparse
import email.policy
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
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from _harness import (
    HOST,
    RESET_REQUEST_PATH,
    Load,
    Server,
    chaser_env,
    create_accounts_in_one_process,
    fmt,
    free_port,
    generate,
    log_problems,
    outbox_counts,
    pct,
    query_db,
    read_response,
    start_chaser,
    stop,
    uvicorn_impl,
    wrk_available,
    wrk_script,
)
from aiosmtpd.controller import Controller

WARMUP_REQUESTS = 3  # per variant, unrecorded: template compilation, first SMTP connection
IDLE_GAP_S = 0.05  # after a mail arrives: the worker records the outcome, then idles
LOAD_LEAD_S = 1.0  # background load before the first measured request
LOAD_TAIL_S = 0.5  # ... and after the last one is due
MEASURED_CONNECTIONS = 4  # under load: the measured requests take turns on these
INF = math.inf


@dataclass(frozen=True)
class Arrival:
    at: float  # time.time() when the message's DATA had been received
    to: str
    message_id: str


class Sink:
    """aiosmtpd handler: accepts every message and records its arrival."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.arrivals: list[Arrival] = []
        self.first_to: dict[str, Arrival] = {}  # recipient -> first arrival
        self.parser = BytesHeaderParser(policy=email.policy.default)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        at = time.time()
        headers = self.parser.parsebytes(bytes(envelope.content))
        to = parseaddr(str(headers.get("To", "")))[1].lower()
        arrival = Arrival(at, to, str(headers.get("Message-ID", "")))
        with self.cond:
            self.arrivals.append(arrival)
            self.first_to.setdefault(to, arrival)
            self.cond.notify_all()
        return "250 OK"

    def wait_for(self, addresses: set[str], deadline: float) -> None:
        """Until a message to each of `addresses` has arrived, or time.time() >= deadline."""
        with self.cond:
            while not addresses <= self.first_to.keys():
                left = deadline - time.time()
                if left <= 0:
                    return
                self.cond.wait(left)

    def first(self, address: str) -> Arrival | None:
        with self.cond:
            return self.first_to.get(address)

    def to(self, addresses: set[str]) -> list[Arrival]:
        with self.cond:
            return [a for a in self.arrivals if a.to in addresses]


@dataclass
class Sample:
    email: str
    sent: float  # time.time() just before the request's bytes were sent
    status: int
    answer_ms: float  # until the HTTP answer had been read
    during_load: bool = False  # the background generator was still running when answered
    offset_s: float = math.nan  # sent this long after the background load started
    late_ms: float = 0.0  # sent this long after it was due (its connection was still busy)


class Client:
    """One keep-alive HTTP/1.1 connection for the measured requests."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection((HOST, port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()

    def post(self, address: str) -> Sample:
        body = json.dumps({"email": address}).encode()
        payload = (
            f"POST {RESET_REQUEST_PATH} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        sent = time.time()
        self.sock.sendall(payload)
        head, _ = read_response(self.sock, self.buffer)
        answered = time.time()
        return Sample(address, sent, int(head.split(b" ", 2)[1]), 1000 * (answered - sent))

    def close(self) -> None:
        self.sock.close()


@dataclass
class VariantResult:
    label: str
    samples: list[Sample] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)  # per 200 answer, in order; INF=lost
    lost: int = 0
    outbox_end: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def one_at_a_time(client: Client, sink: Sink, addresses: list[str], timeout: float) -> list[Sample]:
    """Each request once the previous one's mail has arrived (or timed out)."""
    samples = []
    for address in addresses:
        sample = client.post(address)
        samples.append(sample)
        if sample.status == 200:
            sink.wait_for({address}, sample.sent + timeout)
        time.sleep(IDLE_GAP_S)
    return samples


def under_load(
    server: Server,
    addresses: list[str],
    load: Load,
    workdir: Path,
    bodies: list[str],
) -> tuple[list[Sample], dict[str, Any], dict[str, int]]:
    """Background load for `load.duration` s (a separate generator process, run from a
    thread); meanwhile the measured requests, each due at its own time, evenly from LOAD_LEAD_S
    after the load's start to LOAD_TAIL_S before its end, over MEASURED_CONNECTIONS keep-alive
    connections in turn (one request at a time on each; a request whose connection is still
    waiting for the previous answer goes out late). Returns the samples in the order they were
    due, the generator's figures, and the outbox when the load stopped."""
    body_file = workdir / "bodies-unknown.txt"
    body_file.write_text("\n".join(bodies) + "\n")
    script: Path | None = None
    if load.use_wrk:
        script = workdir / "post-unknown.lua"
        wrk_script(bodies, script)
    clients = [Client(server.port) for _ in range(MEASURED_CONNECTIONS)]
    try:
        with ThreadPoolExecutor(max_workers=1 + MEASURED_CONNECTIONS) as pool:
            started = time.time()
            background = pool.submit(generate, server.port, body_file, script, load, load.duration)
            step = (load.duration - LOAD_LEAD_S - LOAD_TAIL_S) / len(addresses)
            due = [started + LOAD_LEAD_S + i * step for i in range(len(addresses))]

            def lane(k: int) -> list[tuple[int, Sample]]:
                done = []
                for i in range(k, len(addresses), MEASURED_CONNECTIONS):
                    delay = due[i] - time.time()
                    if delay > 0:
                        time.sleep(delay)
                    sample = clients[k].post(addresses[i])
                    sample.during_load = not background.done()
                    sample.offset_s = sample.sent - started
                    sample.late_ms = 1000 * max(0.0, sample.sent - due[i])
                    done.append((i, sample))
                return done

            lanes = [pool.submit(lane, k) for k in range(MEASURED_CONNECTIONS)]
            ordered = sorted((pair for f in lanes for pair in f.result()), key=lambda p: p[0])
            figures = background.result()
    finally:
        for client in clients:
            client.close()
    return [sample for _, sample in ordered], figures, outbox_counts(workdir)


def lost_fates(workdir: Path, sink: Sink, addresses: list[str]) -> Counter[str]:
    """What became of the requests whose mail did not arrive in time."""
    try:
        queued = {
            str(row[0]).lower()
            for row in query_db(
                workdir,
                "SELECT json_extract(payload, '$.email') FROM outbox "
                "WHERE status = 'queued' AND payload IS NOT NULL",
            )
        }
        handled = {
            str(address).lower(): f"outbox row {status}/{outcome}"
            for address, status, outcome in query_db(
                workdir,
                "SELECT u.email, o.status, o.outcome FROM outbox o "
                "JOIN users u ON u.id = o.user_id",
            )
        }
    except sqlite3.Error as exc:
        return Counter({f"unknown ({exc})": len(addresses)})
    fates: Counter[str] = Counter()
    for address in addresses:
        if sink.first(address) is not None:
            fates["arrived after the timeout"] += 1
        elif address in queued:
            fates["still queued in the outbox"] += 1
        else:
            fates[handled.get(address, "no outbox row found")] += 1
    return fates


def run_variant(
    label: str,
    template: Path,
    root: Path,
    smtp_url: str,
    sink: Sink,
    warmup: list[str],
    measured: list[str],
    args: argparse.Namespace,
    load: Load | None,
    background_bodies: list[str],
) -> VariantResult:
    """A fresh `chaser-auth serve` on a fresh copy of the seeded database; warm-up, then the
    measured requests (under `load` if given); then wait for their mail."""
    workdir = root / label.replace(" ", "-")
    shutil.copytree(template, workdir / "var")  # same accounts, empty outbox, fresh limits
    result = VariantResult(label)
    server: Server | None = None
    client: Client | None = None
    code: int | None = None
    try:
        env = chaser_env(workdir, CHASER_AUTH_SMTP_URL=smtp_url)
        server = start_chaser(f"chaser-auth ({label})", workdir, env)
        client = Client(server.port)
        one_at_a_time(client, sink, warmup, args.timeout)
        if load is None:
            result.samples = one_at_a_time(client, sink, measured, args.timeout)
        else:
            result.samples, figures, at_stop = under_load(
                server, measured, load, workdir, background_bodies
            )
            during = sum(s.during_load for s in result.samples)
            late = sorted(s.late_ms for s in result.samples)
            errors = f"{figures['non2xx']}/{figures['errors']}"
            result.notes.append(
                f"background load: {figures['generator']}, {load.connections} connections, "
                f"{load.duration:g} s, unknown addresses: {figures['rps']:.0f} req/s, "
                f"p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms, non-2xx/err "
                f"{errors}; measured requests answered while it ran: {during} of "
                f"{len(result.samples)}; sent after they were due by p50 "
                f"{statistics.median(late):.1f} ms, at most {late[-1]:.1f} ms"
            )
            result.notes.append(f"outbox when the load stopped: {at_stop}")
        answered = [s for s in result.samples if s.status == 200]
        if answered:
            sink.wait_for({s.email for s in answered}, max(s.sent for s in answered) + args.timeout)
        result.outbox_end = outbox_counts(workdir)
        lost: list[str] = []
        for sample in answered:
            arrival = sink.first(sample.email)
            latency = INF if arrival is None else arrival.at - sample.sent
            if latency > args.timeout:
                lost.append(sample.email)
                latency = INF
            result.latencies_ms.append(1000 * latency)
        result.lost = len(lost)
        if lost:
            result.notes.append(f"lost: {dict(lost_fates(workdir, sink, lost))}")
    finally:
        if client is not None:
            client.close()
        code = stop(server)

    mails = sink.to(set(measured))
    ids = Counter(a.message_id for a in mails)
    statuses = Counter(s.status for s in result.samples)
    problems = {k: v for k, v in log_problems(workdir / "server.log").items() if v}
    result.notes.append(
        f"outbox at the end: {result.outbox_end}; messages to the measured addresses "
        f"{len(mails)} ({len(ids)} distinct Message-IDs)"
        f"; answers {dict(statuses)}; HTTP answer p50 "
        f"{fmt(statistics.median([s.answer_ms for s in result.samples]), '.1f')} ms; "
        f"server log problems {problems or 'none'}; exit status {code} (-15: uvicorn re-raises "
        "SIGTERM after its graceful shutdown)"
    )
    if load is not None and len(answered) >= 4:
        quarter = len(answered) // 4
        parts = []
        for i in range(4):
            chunk = slice(i * quarter, (i + 1) * quarter)
            offsets = [s.offset_s for s in answered[chunk]]
            median = statistics.median(result.latencies_ms[chunk])
            parts.append(f"{min(offsets):.1f}-{max(offsets):.1f} s: {ms(median, args.timeout)}")
        result.notes.append(
            "median latency by when the request was sent, in s after the load started, ms: "
            + "; ".join(parts)
        )
    return result


def ms(value: float, timeout: float) -> str:
    return f">{1000 * timeout:.0f}" if value == INF else fmt(value, ".1f")


def print_table(results: list[VariantResult], timeout: float) -> None:
    head = (
        f"{'variant':<12} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'lost':>5} {'non-200':>7} {'outbox backlog at end':>21}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        values = sorted(r.latencies_ms)
        backlog = r.outbox_end.get("queued", 0)
        print(
            f"{r.label:<12} {len(values):>5} {ms(pct(values, 50), timeout):>8} "
            f"{ms(pct(values, 90), timeout):>8} {ms(pct(values, 99), timeout):>8} "
            f"{ms(values[-1] if values else math.nan, timeout):>8} {r.lost:>5} "
            f"{sum(s.status != 200 for s in r.samples):>7} {backlog:>21}"
        )
    for r in results:
        for note in r.notes:
            print(f"  [{r.label}] {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=200, help="measured requests per variant")
    parser.add_argument(
        "--duration", type=float, default=8.0, help="seconds of background load (default 8)"
    )
    parser.add_argument("--connections", type=int, default=64, help="of the background load")
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="a mail not arrived this many seconds after its request counts as lost (default 30)",
    )
    parser.add_argument("--max-requests", type=int, default=300_000, help="loadgen cap")
    parser.add_argument("--no-wrk", action="store_true", help="use loadgen.py even if wrk exists")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, db)")
    args = parser.parse_args()
    if args.samples < 1 or args.timeout <= 0 or args.connections < 1:
        parser.error("need --samples >= 1, --timeout > 0, --connections >= 1")
    if args.duration <= LOAD_LEAD_S + LOAD_TAIL_S:
        parser.error(f"need --duration > {LOAD_LEAD_S + LOAD_TAIL_S:g} s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the `finally` blocks run

    started = time.monotonic()
    rng = random.Random(20261127)
    unknown = [f"nobody-{rng.getrandbits(48):012x}@example.net" for _ in range(10_000)]
    unknown_bodies = [json.dumps({"email": e}) for e in unknown]
    load = Load(args.connections, args.duration, 0.0, wrk_available(args.no_wrk), args.max_requests)
    per_variant = WARMUP_REQUESTS + args.samples
    wanted = {
        label: [f"lat-{label}-{i:05d}@example.com" for i in range(per_variant)]
        for label in ("idle", "load")
    }
    root = Path(tempfile.mkdtemp(prefix="chaser-latency-"))
    sink = Sink()
    smtp_port = free_port()
    # A fixed greeting name: without one, aiosmtpd calls socket.getfqdn() for every connection
    # (a name lookup on the sink's event loop, which would count as delivery latency here).
    controller = Controller(sink, hostname=HOST, port=smtp_port, server_hostname="localhost")
    print(
        f"delivery latency on {HOST}: POST {RESET_REQUEST_PATH} -> SMTP receipt (aiosmtpd in the "
        f"bench process), {args.samples} measured requests per variant, one account each, after "
        f"{WARMUP_REQUESTS} unrecorded; background load {load.generator} {args.connections} "
        f"connections {args.duration:g} s with unknown addresses; lost = no mail within "
        f"{args.timeout:g} s; uvicorn {uvicorn_impl()}; {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results: list[VariantResult] = []
    controller.start()
    try:
        seed_dir = root / "seed"
        seed_dir.mkdir()
        server: Server | None = None
        try:
            server = start_chaser("chaser-auth (seed)", seed_dir, chaser_env(seed_dir))
            emails = [e for addresses in wanted.values() for e in addresses]
            count, took = create_accounts_in_one_process(seed_dir, chaser_env(seed_dir), emails)
        finally:
            stop(server)
        print(
            f"  created {count} accounts in {took:.1f} s (one process, the CLI's service call)",
            flush=True,
        )
        smtp_url = f"smtp://{HOST}:{smtp_port}"
        for label, variant_load in (("idle", None), ("under load", load)):
            addresses = wanted["idle" if variant_load is None else "load"]
            results.append(
                run_variant(
                    label,
                    seed_dir / "var",
                    root,
                    smtp_url,
                    sink,
                    addresses[:WARMUP_REQUESTS],
                    addresses[WARMUP_REQUESTS:],
                    args,
                    variant_load,
                    unknown_bodies,
                )
            )
            print(f"  {label} done at {time.monotonic() - started:.0f} s", flush=True)

        print()
        print_table(results, args.timeout)
        print(
            "\nlatency = from just before a measured request is sent to the arrival of its "
            "message at the SMTP server (time.time() in one process); n = measured requests "
            f"answered 200; lost = of those, no message within {args.timeout:g} s (counted as "
            "longer than that in the percentiles); outbox backlog = rows still queued at the "
            "end (after the last mail arrived or timed out)."
        )
        others = len(sink.arrivals) - sum(len(sink.to(set(a))) for a in wanted.values())
        print(f"messages to other addresses (there should be none): {others}")
        print(f"total bench time {time.monotonic() - started:.0f} s")
    finally:
        controller.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
