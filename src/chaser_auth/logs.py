"""Process-wide logging set-up, shared by the CLI and by `serve --workers N`'s child
processes (which start as fresh interpreters and would otherwise log nothing)."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str, *, service: bool) -> None:
    """Services (serve, worker) log to stdout for their supervisor; one-shot commands log to
    stderr so that their stdout is only their answer."""
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stdout if service else sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
