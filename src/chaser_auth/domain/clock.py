"""Time has a seam (like Django's `PasswordResetTokenGenerator._now`): everything that asks
"what time is it" is handed a `Clock`, so tests move time instead of sleeping."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)
