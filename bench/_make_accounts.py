"""Create accounts in one process through chaser-auth's own service — what `chaser-auth users
create` does (`cli._create_user`), without paying ~1 s of interpreter start-up per account.

Run with the working directory and CHASER_AUTH_* environment of the server it is for; the
addresses come one per line on stdin, the password is `_harness.PASSWORD`. Prints how many were
created. Used by timing_leak.py, which needs >= 50 accounts within its time budget, and by
login_timing.py. The argon2 cost is whatever the environment says (`_harness` lowers it unless
asked for the production cost).
"""

from __future__ import annotations

import asyncio
import sys

from _harness import PASSWORD

from chaser_auth.config import Settings
from chaser_auth.runtime import Runtime


async def create(emails: list[str]) -> int:
    runtime = Runtime.build(Settings())
    try:
        for email in emails:
            await runtime.accounts.create(email, PASSWORD)
    finally:
        await runtime.close()
    return len(emails)


def main() -> int:
    emails = [line.strip() for line in sys.stdin if line.strip()]
    print(asyncio.run(create(emails)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
