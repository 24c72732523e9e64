"""What a sustained flood leaves on disk: reset requests for addresses with no account, each
client within the default per-IP limit (10 a minute), from many clients, while the worker's
hourly chores (`Housekeeping.run`) run with a clock that moves on by hours between them.

The server (the app, its in-process delivery worker, SQLite, every setting at its default but
the log level) runs in this process on a free port, its clock real time plus an offset. A
generator process sends the requests, each client from a loopback address of its own
(127.0.x.y stand for distinct hosts, as the per-IP limit counts them), one request every
6.5 s per client. Every `--step` seconds the offset grows by `--hours` and the chores run:
each step stands for that many hours of the flood. The table shows the database file's size
level off once the oldest rows pass the retention.

    .venv/bin/python bench/storage_flood.py [--clients 3000] [--steps 14] [--step 8]
        [--hours 4] [--unmatched-hours 24] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _harness import HOST, PYTHON, RESET_REQUEST_PATH, free_port, kill_quietly  # noqa: E402

PER_CLIENT_INTERVAL = 6.5  # seconds between one client's requests: 9.2 a minute, under 10


# -- the generator (a process of its own) ----------------------------------------------------


def client_address(i: int) -> str:
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


async def one_request(port: int, source: str, statuses: Counter[str]) -> None:
    body = json.dumps({"email": f"nobody-{uuid.uuid4().hex[:12]}@example.com"}).encode()
    head = (
        f"POST {RESET_REQUEST_PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    try:
        reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
        writer.write(head + body)
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()
        writer.close()
        statuses[status_line.split(b" ")[1].decode() if status_line else "closed"] += 1
    except OSError as exc:
        statuses[type(exc).__name__] += 1


async def generate(port: int, clients: int, seconds: float) -> Counter[str]:
    statuses: Counter[str] = Counter()
    stop = time.monotonic() + seconds

    async def client(i: int) -> None:
        await asyncio.sleep(PER_CLIENT_INTERVAL * i / clients)  # spread the clients out
        while (start := time.monotonic()) < stop:
            await one_request(port, client_address(i), statuses)
            await asyncio.sleep(max(0.0, PER_CLIENT_INTERVAL - (time.monotonic() - start)))

    await asyncio.gather(*(client(i) for i in range(clients)))
    return statuses


# -- the server and the measurements (this process) ------------------------------------------


class MovedClock:
    """Real time plus an offset that the bench moves on."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def sizes(db: Path) -> tuple[float, float, int, int]:
    """(file MB with its WAL, MB in use (pages not on the free list), outbox rows, audit rows)."""
    wal = db.with_name(db.name + "-wal")
    total = db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as con:
        pages = con.execute("PRAGMA page_count").fetchone()[0]
        free = con.execute("PRAGMA freelist_count").fetchone()[0]
        size = con.execute("PRAGMA page_size").fetchone()[0]
        outbox = con.execute("SELECT count(*) FROM outbox").fetchone()[0]
        audit = con.execute("SELECT count(*) FROM audit_events").fetchone()[0]
    return total / 1e6, (pages - free) * size / 1e6, int(outbox), int(audit)


async def run(args: argparse.Namespace) -> None:
    import uvicorn

    from chaser_auth.app import create_app
    from chaser_auth.config import Settings
    from chaser_auth.store import migrate

    workdir = Path(tempfile.mkdtemp(prefix="chaser-storage-flood-"))
    db = workdir / "auth.db"
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=f"sqlite+aiosqlite:///{db}",
        secret_key_file=workdir / "secret_key",
        mail_dir=workdir / "mail",
        log_level="WARNING",
        unmatched_retention_hours=args.unmatched_hours,
    )
    await asyncio.to_thread(migrate.upgrade, settings.database_url)
    clock = MovedClock()
    app = create_app(settings, clock)
    port = free_port()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", backlog=4096)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.05)
    runtime = app.state.runtime
    duration = args.steps * args.step
    generator = subprocess.Popen(
        [str(PYTHON), __file__, "--generate", str(port), str(args.clients), str(duration)],
        stdout=subprocess.PIPE,
    )
    print(
        f"{args.clients} clients, one request each {PER_CLIENT_INTERVAL} s "
        f"(~{args.clients / PER_CLIENT_INTERVAL:.0f} req/s); every {args.step} s the clock "
        f"moves {args.hours} h and the chores run; unmatched retention "
        f"{settings.unmatched_retention_hours} h, outbox {settings.outbox_retention_hours} h"
    )
    print(f"{'hours':>6} {'file MB':>8} {'used MB':>8} {'outbox':>8} {'audit':>8} {'chores s':>9}")
    try:
        started = time.monotonic()
        for step in range(1, args.steps + 1):
            await asyncio.sleep(max(0.0, started + step * args.step - time.monotonic()))
            clock.offset += timedelta(hours=args.hours)
            chores = time.monotonic()
            await runtime.housekeeping.run()
            took = time.monotonic() - chores
            file_mb, used_mb, outbox, audit = await asyncio.to_thread(sizes, db)
            print(
                f"{step * args.hours:>6} {file_mb:>8.2f} {used_mb:>8.2f} {outbox:>8} "
                f"{audit:>8} {took:>9.2f}",
                flush=True,
            )
        out, _ = await asyncio.to_thread(generator.communicate, timeout=60)
        statuses = json.loads(out)
        print(f"answers: {statuses} (every one 200: within the per-client limit)")
    finally:
        kill_quietly(generator)
        server.should_exit = True
        await serving
        if args.keep:
            print(f"kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--step", type=float, default=8.0, help="real seconds per step")
    parser.add_argument("--hours", type=int, default=4, help="clock hours per step")
    parser.add_argument("--unmatched-hours", type=int, default=24)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--generate", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        port, clients, seconds = args.generate
        statuses = asyncio.run(generate(int(port), int(clients), float(seconds)))
        print(json.dumps(dict(statuses)))
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
