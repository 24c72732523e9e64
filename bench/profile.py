"""Where a reset request's time goes: `chaser-auth serve` under load, sampled by py-spy.

One command: a fresh `serve` (default settings as in the other benches, `--no-worker` on
request), accounts for the `existing` variant, a warm-up, then the load generator for
`--duration` seconds while `py-spy record --gil` samples the server (only samples in which a
thread holds the GIL: the Python work that competes for the one core the event loop has).
It prints the flame summary: for the frames that matter, the share of samples in which they
are on the stack (inclusive) and the share in which they are the innermost Python frame
(self). The raw collapsed stacks are kept next to it for a flame graph.

    .venv/bin/python bench/profile.py [--variant unknown|existing] [--no-worker] [--duration 8]

py-spy is in the `dev` extra (pinned). It needs ptrace rights over the server: run as root or
with kernel.yama.ptrace_scope=0.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _harness import (
    PYTHON,
    Load,
    chaser_env,
    create_accounts,
    generate,
    start_chaser,
    stop,
    wrk_available,
    wrk_script,
)

SPY = Path(PYTHON).parent / "py-spy"
# Frames worth a line of their own: ours, and the layers a reset request passes through.
WATCH = re.compile(
    r"\((chaser_auth/|fastapi/applications|starlette/applications|uvicorn/protocols|"
    r"sqlalchemy/orm/session|aiosqlite/|logging/__init__|limits/aio/|pythonjsonlogger/|"
    r"prometheus_client/|asyncio/threads)"
)


def summarise(raw: Path, top: int) -> list[str]:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        frames = [re.sub(r" \(/.*?/(site-packages|python3\.\d+|src)/", " (", f) for f in frames]
        for frame in set(frames):
            inclusive[frame] += samples
        own[frames[-1]] += samples
    if total == 0:
        return ["no samples (is py-spy allowed to trace the server?)"]
    lines = [f"{total} samples with the GIL held", "", "incl %  self %  frame"]
    watched = [(n, f) for f, n in inclusive.items() if WATCH.search(f)]
    for n, frame in sorted(watched, reverse=True)[:top]:
        lines.append(f"{100 * n / total:6.1f} {100 * own[frame] / total:7.1f}  {frame}")
    lines += ["", "innermost frames (self %), any module:"]
    for frame, n in own.most_common(12):
        lines.append(f"{100 * n / total:6.1f}  {frame}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--variant", choices=("unknown", "existing"), default="unknown")
    parser.add_argument("--no-worker", action="store_true", help="serve --no-worker")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=40, help="frames in the summary")
    parser.add_argument("--out", type=Path, help="keep the raw stacks and summary here")
    args = parser.parse_args()
    if not SPY.exists():
        print(f"py-spy not found at {SPY}: install the dev extra", file=sys.stderr)
        return 1

    root = Path(tempfile.mkdtemp(prefix="chaser-profile-"))
    out = args.out or root
    out.mkdir(parents=True, exist_ok=True)
    load = Load(args.connections, args.duration, 1.0, wrk_available())
    rng = random.Random(20261127)
    server = None
    try:
        if args.variant == "existing":
            wanted = [f"profile-user-{i:03d}@example.com" for i in range(60)]
            created, _ = create_accounts(root, chaser_env(root), wanted, os.cpu_count() or 2, 30)
            emails = created * (10_000 // max(1, len(created)) + 1)
        else:
            emails = [f"nobody-{rng.getrandbits(48):012x}@example.net" for _ in range(10_000)]
        rng.shuffle(emails)
        bodies = [json.dumps({"email": e}) for e in emails]
        body_file = root / "bodies.txt"
        body_file.write_text("\n".join(bodies) + "\n")
        script = None
        if load.use_wrk:
            script = root / "post.lua"
            wrk_script(bodies, script)
        serve_args = ("--no-worker",) if args.no_worker else ()
        server = start_chaser("chaser-auth", root, chaser_env(root), serve_args)
        generate(server.port, body_file, script, load, load.warmup)
        raw = out / "profile.raw.txt"
        spy = subprocess.Popen(
            [
                *(str(SPY), "record", "--gil", "-p", str(server.pid), "-r", str(args.rate)),
                *("-d", f"{args.duration:g}", "-f", "raw", "-o", str(raw), "--nonblocking"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        measured = generate(server.port, body_file, script, load, args.duration)
        _, err = spy.communicate(timeout=args.duration + 30)
        if spy.returncode != 0 or not raw.exists():
            print(f"py-spy failed ({spy.returncode}): {err.strip()}", file=sys.stderr)
            return 1
        head = (
            f"profile: {args.variant} addresses, {'--no-worker' if args.no_worker else 'worker'}"
            f" in-process, {args.connections} connections, {load.generator}: "
            f"{measured['rps']:.0f} req/s while sampled (py-spy slows the server a little)"
        )
        summary = [head, "", *summarise(raw, args.top)]
        (out / "profile.summary.txt").write_text("\n".join(summary) + "\n")
        print("\n".join(summary))
        if args.out:
            print(f"\nraw stacks: {raw} (flamegraph.pl or speedscope read them)")
    finally:
        stop(server)
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
