"""Bearer secrets: reset links, session tokens — how they are made, stored and checked.

A token is 256 bits from the OS CSPRNG (or, for a reset link, an HMAC of the server secret;
see `derive`), written as unpadded base64url: 43 characters of `[A-Za-z0-9_-]`.

Only `digest(token)` — HMAC-SHA256 under the server secret — is ever stored. A copy of the
database alone therefore yields no usable token, and without the secret one cannot even test
a guess offline (OWASP Forgot Password Cheat Sheet: "store tokens hashed").

A reset token stops working, checked in this order (`recovery.RecoveryService.check`):
  1. its digest is not in the table (never issued, or mistyped);
  2. it was used: `used_at` is set by the one UPDATE that consumes it, so of two concurrent
     confirms exactly one changes the row (docs/api.md);
  3. it was revoked: a newer link for the same account, any password change, or a successful
     reset revokes every outstanding link of the account at once;
  4. it expired: valid while now <= expires_at (valid at TTL, dead at TTL + 1 s);
  5. its account was disabled or deleted.
The look-up is by digest, which an attacker cannot steer, so the database's index walk leaks
nothing about how close a guess was; no comparison of secret bytes happens in Python.

Every HMAC here is `hmac.digest`, the standard library's one-shot HMAC in C: the same value as
`hmac.new(...).digest()` without an HMAC object built in Python (the worker makes one per
request of a flood).
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
import unicodedata
import uuid

TOKEN_BYTES = 32
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{43,128}")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def new_token() -> str:
    return _b64(secrets.token_bytes(TOKEN_BYTES))


def derive(secret: bytes, purpose: str, job_id: uuid.UUID) -> str:
    """The reset link's token for outbox job `job_id`.

    Derived rather than stored so that a retry after an SMTP failure or a worker crash sends
    the very same link (and Message-ID) without the outbox ever holding the token: only a
    holder of the server secret can compute it (docs/security.md, "Security decisions").
    """
    return _b64(hmac.digest(secret, f"chaser-auth/{purpose}/".encode() + job_id.bytes, "sha256"))


def digest(secret: bytes, token: str) -> str:
    return hmac.digest(secret, b"chaser-auth/digest/" + _bytes(token), "sha256").hex()


# -- one-time codes ---------------------------------------------------------------------------
#
# A mailed link's token has a short stand-in a person can type: CODE_DIGITS decimal digits,
# derived like the token from the outbox row (a retried send carries the same code), and stored
# only as `code_digest`, an HMAC under the server secret bound to the link's row, so a copy of
# the database alone neither holds a code nor lets one test a guess offline. Why eight digits:
# docs/security.md, "One-time codes".

CODE_DIGITS = 8
_CODE_SPACE = 10**CODE_DIGITS
_CODE_PATTERN = re.compile(rf"[0-9]{{{CODE_DIGITS}}}")
_CODE_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015.]")


def derive_code(secret: bytes, purpose: str, job_id: uuid.UUID) -> str:
    """The one-time code mailed with the link of outbox job `job_id`. The bias of reducing a
    256-bit HMAC modulo 10^8 is under 2^-200: every code is as likely as any other."""
    raw = hmac.digest(secret, f"chaser-auth/code/{purpose}/".encode() + job_id.bytes, "sha256")
    return f"{int.from_bytes(raw, 'big') % _CODE_SPACE:0{CODE_DIGITS}d}"


def code_digest(secret: bytes, purpose: str, link_id: uuid.UUID, code: str) -> str:
    """What is stored of a code: bound to its link's row, so the same code of two links (or of
    two addresses) has two different digests."""
    message = f"chaser-auth/code-digest/{purpose}/".encode() + link_id.bytes + _bytes(code)
    return hmac.digest(secret, message, "sha256").hex()


def normal_code(text: str) -> str | None:
    """A typed code as its digits (spaces, hyphens and dots between them dropped; full-width
    digits read as digits), or None when it is not CODE_DIGITS digits."""
    digits = _CODE_SEPARATORS.sub("", unicodedata.normalize("NFKC", text))
    return digits if _CODE_PATTERN.fullmatch(digits) else None


def same_digest(a: str, b: str) -> bool:
    """Two digests compared in constant time."""
    return hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))


def show_code(code: str) -> str:
    """The code as mailed: two groups of four digits, easier to read and type."""
    half = len(code) // 2
    return f"{code[:half]} {code[half:]}"


def is_well_formed(token: str) -> bool:
    return TOKEN_PATTERN.fullmatch(token) is not None


def keyed_hash(secret: bytes, value: str) -> str:
    """A stable pseudonym for an address in logs, audit rows and limiter keys."""
    return hmac.digest(secret, b"chaser-auth/subject/" + _bytes(value), "sha256").hex()[:32]


def _bytes(text: str) -> bytes:
    # surrogatepass: a lone surrogate (valid in a Python str, not in UTF-8) hashes instead of
    # raising; the API refuses such strings anyway.
    return text.encode("utf-8", "surrogatepass")
