"""The "ceiling": the cheapest app that still does what the reset request must do on the wire.

A bare Starlette app (no FastAPI, no database, no middleware) with one route,
`POST /auth/password-reset/request`: parse the JSON body `{"email": ...}`, answer
`200 {"message": "..."}`. Whatever chaser-auth loses against this, under the same uvicorn
settings, is the cost of its own stack (FastAPI, validation, middleware, rate limit, outbox
write, in-process worker).

Run it like `chaser-auth serve` runs its app (one process, uvicorn auto loop/http, access log
and server header off):

    .venv/bin/python bench/ceiling_app.py --port 8001
"""

from __future__ import annotations

import argparse
import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MESSAGE = (
    "If an account exists for this email address, a link to reset its password has been sent to it."
)


async def request_password_reset(request: Request) -> Response:
    try:
        body = json.loads(await request.body())
    except ValueError:
        return JSONResponse({"error": {"code": "invalid_json"}}, status_code=422)
    if not isinstance(body, dict) or not isinstance(body.get("email"), str):
        return JSONResponse({"error": {"code": "validation_error"}}, status_code=422)
    return JSONResponse({"message": MESSAGE})


app = Starlette(
    routes=[Route("/auth/password-reset/request", request_password_reset, methods=["POST"])]
)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    # The same keyword arguments `chaser-auth serve` passes (src/chaser_auth/cli.py, serve()).
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=20,
    )


if __name__ == "__main__":
    main()
