"""Process-wide logging set-up, shared by the CLI and by `serve --workers N`'s child
processes (which start as fresh interpreters and would otherwise log nothing).

Services (serve, worker) write one JSON object per line to stdout (python-json-logger, with
orjson doing the encoding: on a busy server the access log is a good part of each request):
`time`, `level`, `logger`, `message`, the `request_id` of the request being answered (if any)
and the structured fields a call passes in `extra`. `CHASER_AUTH_LOG_FORMAT=text` gives plain
lines instead. One-shot commands log text to stderr, so that their stdout is only their answer.

No log line carries an address, a token or a password: callers log ids, outcomes and keyed
hashes only, and the request id comes from `X-Request-ID` only if it is a short plain token.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from typing import Any

from pythonjsonlogger.orjson import OrjsonFormatter

# Set by the edge middleware for the duration of each request; read by every log record.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "chaser_auth_request_id", default=None
)


_plain_record = logging.getLogRecordFactory()


def _record_with_request_id(*args: Any, **kwargs: Any) -> logging.LogRecord:
    # A record factory rather than a handler filter: every record carries the id, whichever
    # handler (ours, a test's, an operator's) ends up writing it.
    record = _plain_record(*args, **kwargs)
    record.request_id = request_id.get()
    return record


logging.setLogRecordFactory(_record_with_request_id)

# What no line of ours prints, so no record need gather it (the logging HOWTO, "Optimization"):
# the caller's file and line (a walk up the stack on every record), thread and process ids.
logging._srcfile = None  # the documented switch
logging.logThreads = False
logging.logProcesses = False
logging.logMultiprocessing = False


def configure_logging(level: str, *, service: bool, fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stdout if service else sys.stderr)
    if service and fmt == "json":
        handler.setFormatter(
            OrjsonFormatter(
                "{levelname}{name}{message}{request_id}",
                style="{",
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp="time",  # ISO 8601, UTC
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
