"""The operator listener: `/metrics`, `/healthz`, `/readyz` and the admin API (`/admin/…`,
`api/admin.py`) on an address of their own (`CHASER_AUTH_OPERATOR_ADDRESS`, loopback by
default), apart from the public API.

Why apart: the counters of `/metrics` move with what the worker decided for each request (mail
`sent`, `no_account`, `suppressed`; tokens `issued`), so anyone who can read them while asking
for a reset learns whether an address has an account — what every public answer is built not
to tell. On the public listener `/metrics` is a 404 like any unknown path. (Ory Kratos splits
its public and admin ports the same way.)

The listener is a second uvicorn server in the public app's event loop, started and stopped
by the public app's lifespan, on the same `Runtime` (one engine, one pool). The standalone
`chaser-auth worker` serves one too, with `/metrics`, `/healthz` and `/readyz` only: in a
scaled-out deployment the mail counters are the workers', and each is scraped on its own. Under
`serve --workers N` every process binds the one operator port with SO_REUSEPORT (Linux), the
kernel spreads the scrapes over them, and whichever answers reports the sum of all
(`metrics.py`, multiprocess mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from chaser_auth import __version__
from chaser_auth.api import admin, errors, health
from chaser_auth.api.middleware import EdgeMiddleware
from chaser_auth.runtime import Runtime


def create_operator_app(runtime: Runtime, *, with_admin: bool = True) -> FastAPI:
    """Health, metrics and the admin API (`api/admin.py`) on `runtime`, with the public app's
    error shape and edge headers. Its OpenAPI document, `/admin/openapi.json`, describes the
    admin API alone. Without `with_admin` (the standalone worker's listener), health and
    metrics only, and no document."""
    app = FastAPI(
        title="chaser-auth admin API",
        version=__version__,
        description=admin.DESCRIPTION,
        openapi_url=admin.OPENAPI_URL if with_admin else None,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
        separate_input_output_schemas=False,
    )
    app.state.runtime = runtime
    errors.install(app)
    app.include_router(health.router, include_in_schema=False)
    app.include_router(health.metrics_router, include_in_schema=False)
    if with_admin:
        app.include_router(admin.router)
    app.add_middleware(EdgeMiddleware)
    return app


def bind(host: str, port: int, *, shared: bool = False) -> socket.socket:
    """A listening TCP socket on (host, port). `shared` sets SO_REUSEPORT, so that the
    processes of `serve --workers N` can all listen on the one port; a socket bound without
    it (another program, another chaser-auth) still makes the bind fail."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    # IPPROTO_TCP spelled out: asyncio turns Nagle off only on sockets that say so.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return sock


def socket_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # SIGTERM and SIGINT belong to the public server; this one stops when its lifespan ends.
        yield


class OperatorListener:
    """The operator app served on `sock` by a uvicorn server of its own, in this event loop."""

    def __init__(self, app: FastAPI, sock: socket.socket) -> None:
        self.sock = sock
        self.url = socket_url(sock)
        config = uvicorn.Config(
            app,
            lifespan="off",  # the public app's lifespan owns the runtime
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=5,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self.sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the operator listener stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        self.sock.close()
