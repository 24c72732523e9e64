"""`create_app(settings)` → the ASGI app: routers, pages, error handlers, edge middleware, lifespan.

The lifespan builds the `Runtime` (engine, services), starts the operator listener
(`api/operator.py`: `/metrics`, `/healthz`, `/readyz` and the admin API on
`CHASER_AUTH_OPERATOR_ADDRESS`; its URL
is `app.state.operator_url`, None when it is off) and, unless `embedded_worker` is off, runs
the delivery worker as a task in the same event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.types import ASGIApp

from chaser_auth import __version__
from chaser_auth.api import accounts, email, errors, health, reset, signup
from chaser_auth.api.browser import Cors
from chaser_auth.api.deps import parse_proxies
from chaser_auth.api.fastpath import RequestLane
from chaser_auth.api.middleware import EdgeMiddleware
from chaser_auth.api.operator import OperatorListener, bind, create_operator_app
from chaser_auth.config import Settings
from chaser_auth.domain import devices
from chaser_auth.domain.clock import Clock, utcnow
from chaser_auth.logs import configure_logging
from chaser_auth.runtime import Runtime
from chaser_auth.web import docs, pages

log = logging.getLogger("chaser_auth")

OPENAPI_URL = "/openapi.json"

DESCRIPTION = """Self-hostable implementation of the `auth` surface of the Chaser Core API.

Every error has one shape: `{"error": {"code", "message", "details"}}`."""


class ChaserAPI(FastAPI):
    """FastAPI with the reset request's lane (`api.fastpath.RequestLane`) in front of its whole
    middleware stack, error middleware included: the lane answers the everyday reset request
    and hands everything else to the stack."""

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        path = reset.RESET_REQUEST_PATH
        route = next(r for r in reset.router.routes if getattr(r, "path", None) == path)
        return RequestLane(stack, route, cors=bool(self.state.cors_origins))


def create_app(
    settings: Settings,
    clock: Clock = utcnow,
    *,
    share_operator_port: bool = False,
    freeze_heap: bool = False,
) -> FastAPI:
    """`share_operator_port`: bind the operator listener with SO_REUSEPORT, for the processes
    of `serve --workers N`, which all listen on the one operator port. `freeze_heap`: once
    started, move what start-up built out of the garbage collector's sight (`gc.freeze`) — for
    a process that serves this one app (`chaser-auth serve`), not for one that starts many
    (the tests: a full collection of their whole heap at every start would cost more than it
    saves)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime.build(settings, clock)
        app.state.runtime = runtime
        devices.warm_up()
        operator: OperatorListener | None = None
        stop = asyncio.Event()
        task: asyncio.Task[None] | None = None
        try:
            if (address := settings.operator_host_port) is not None:
                sock = bind(*address, shared=share_operator_port)
                operator = OperatorListener(create_operator_app(runtime), sock)
                await operator.start()
                log.info(
                    "operator listener on %s (/metrics, /healthz, /readyz, /admin)", operator.url
                )
            app.state.operator_url = operator.url if operator else None
            if settings.embedded_worker:
                task = asyncio.create_task(runtime.worker().run(stop))
            # What start-up built (modules, models, the runtime) lives as long as the process:
            # out of the collector's sight, a full collection under load no longer walks it all
            # and stops the event loop for tens of milliseconds (the tail latency of the reset
            # request under load). Python's documented `gc.freeze`; objects made later are
            # collected.
            if freeze_heap:
                gc.collect()
                gc.freeze()
            try:
                yield
            finally:
                if freeze_heap:
                    gc.unfreeze()
        finally:
            stop.set()
            if task is not None:
                await task
            if operator is not None:
                await operator.stop()
            await runtime.close()

    app = ChaserAPI(
        title="chaser-auth",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        separate_input_output_schemas=False,
        redirect_slashes=False,  # a redirect would be built from the client's Host header
        servers=[{"url": settings.public_url}],
        # FastAPI's own OpenTelemetry hooks stay off: we have our metrics and logs, its logs
        # would record exception messages (which may quote an address), and asking whether
        # a provider is configured costs an environment look-up on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        openapi_url=OPENAPI_URL,
        docs_url=None,  # web/docs.py: Swagger UI from installed files, not from a CDN
        redoc_url=None,
    )
    app.state.trusted_proxies = parse_proxies(settings.trusted_proxies)
    errors.install(app)
    app.include_router(reset.router)
    app.include_router(signup.router)
    app.include_router(accounts.router)
    app.include_router(email.router)
    app.include_router(health.router)
    app.include_router(pages.router(settings))
    app.mount("/static", pages.static_files(settings), name="static")
    app.include_router(docs.router(f"{app.title} - docs", OPENAPI_URL, settings.public_url))
    app.mount(docs.STATIC_PATH, docs.static_files(), name="docs-static")
    # Inside the edge layer (so preflights get its request id, headers and log line); the
    # request lane hands requests with an Origin to this stack when CORS is on.
    app.state.cors_origins = settings.cors_origin_list
    app.add_middleware(Cors, origins=settings.cors_origin_list)
    app.add_middleware(EdgeMiddleware)
    return app


def app_from_environment() -> FastAPI:
    """Factory for `uvicorn --factory` (used by `chaser-auth serve --workers N`): each child
    process reads the same environment and sets up its own logging."""
    settings = Settings()
    configure_logging(settings.log_level, service=True, fmt=settings.log_format)
    return create_app(settings, share_operator_port=True, freeze_heap=True)
