"""A small closed-loop HTTP/1.1 load generator: N keep-alive connections on raw asyncio streams,
each sending the next POST as soon as the previous answer is read. Used when `wrk` is absent.

It runs as its own process (the parent measures its CPU with wait4), talks to 127.0.0.1 only,
and is bounded by time (`--warmup` + `--duration`, plus a 10 s grace for answers in flight)
and by `--max-requests`. It prints one JSON object on stdout:

    .venv/bin/python bench/loadgen.py --port 8001 --bodies bodies.txt --duration 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import sys
import time
from collections import Counter
from pathlib import Path

from _harness import CLIENTS, HOST

GRACE_S = 10.0


class Run:
    def __init__(self, requests: list[bytes], warm_end: float, deadline: float, cap: int) -> None:
        self.requests = requests
        self.warm_end = warm_end
        self.deadline = deadline
        self.cap = cap
        self.issued = 0
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.reconnects = 0


async def connection(run: Run, index: int, port: int) -> None:
    requests = run.requests
    position = (index * 7919) % len(requests)  # connections walk the list at different offsets
    clock = time.perf_counter
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        while clock() < run.deadline and run.issued < run.cap:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection(HOST, port)
                except OSError as exc:
                    run.errors[f"connect:{type(exc).__name__}"] += 1
                    await asyncio.sleep(0.05)
                    continue
            assert reader is not None
            payload = requests[position]
            position = position + 1 if position + 1 < len(requests) else 0
            run.issued += 1
            started = clock()
            try:
                writer.write(payload)
                head = await reader.readuntil(b"\r\n\r\n")
                lower = head.lower()
                at = lower.find(b"\r\ncontent-length:")
                if at < 0:
                    raise ValueError("no content-length")
                end = lower.index(b"\r\n", at + 2)
                length = int(lower[at + 17 : end])
                if length:
                    await reader.readexactly(length)
            except (
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ValueError,
            ) as exc:
                run.errors[f"read:{type(exc).__name__}"] += 1
                writer.close()
                reader = writer = None
                run.reconnects += 1
                continue
            finished = clock()
            if run.warm_end <= finished <= run.deadline:
                run.latencies.append(finished - started)
                run.statuses[int(head[9:12])] += 1
            if b"\r\nconnection: close" in lower:
                writer.close()
                reader = writer = None
                run.reconnects += 1
    finally:
        if writer is not None:
            writer.close()


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    bodies = [line for line in Path(args.bodies).read_bytes().splitlines() if line.strip()]
    # As wrk's script does (_harness.wrk_script): each request from the next of `CLIENTS`.
    requests = [
        b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
        b"X-Forwarded-For: %s\r\nContent-Length: %d\r\n\r\n%s"
        % (
            args.path.encode(),
            HOST.encode(),
            args.port,
            CLIENTS[i % len(CLIENTS)].encode(),
            len(body),
            body,
        )
        for i, body in enumerate(bodies)
    ]
    now = time.perf_counter()
    run = Run(requests, now + args.warmup, now + args.warmup + args.duration, args.max_requests)
    tasks = [asyncio.create_task(connection(run, i, args.port)) for i in range(args.connections)]
    done, pending = await asyncio.wait(tasks, timeout=args.warmup + args.duration + GRACE_S)
    for task in pending:
        task.cancel()
        run.errors["timeout"] += 1
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            run.errors[f"task:{type(task.exception()).__name__}"] += 1
    measured_window = min(args.duration, max(1e-9, time.perf_counter() - run.warm_end))
    lat = sorted(run.latencies)

    def q(p: float) -> float:
        if not lat:
            return float("nan")
        return lat[max(0, min(len(lat) - 1, math.ceil(len(lat) * p / 100) - 1))] * 1000

    usage = resource.getrusage(resource.RUSAGE_SELF)
    non2xx = sum(n for status, n in run.statuses.items() if not 200 <= status < 300)
    return {
        "generator": f"python-asyncio ({type(asyncio.get_running_loop()).__module__})",
        "requests": len(lat),
        "issued": run.issued,
        "window_s": measured_window,
        "rps": len(lat) / measured_window,
        "p50_ms": q(50),
        "p90_ms": q(90),
        "p99_ms": q(99),
        "max_ms": lat[-1] * 1000 if lat else float("nan"),
        "statuses": {str(k): v for k, v in sorted(run.statuses.items())},
        "non2xx": non2xx,
        "errors": sum(run.errors.values()),
        "error_kinds": dict(run.errors),
        "reconnects": run.reconnects,
        "cpu_s": usage.ru_utime + usage.ru_stime,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="closed-loop HTTP/1.1 POST load generator")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/auth/password-reset/request")
    parser.add_argument("--bodies", required=True, help="file with one request body per line")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--max-requests", type=int, default=300_000)
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(main_async(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
