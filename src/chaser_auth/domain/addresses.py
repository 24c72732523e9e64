"""How an email address typed by a person is matched to the address stored on an account.

The rule (docs/security.md, "Security decisions"), applied to the registration check and to every
look-up alike: trim the string; split at the last "@"; the domain is lowercased and
IDNA-encoded (UTS #46, which also folds full-width forms); the local part is compared
case-insensitively after Unicode NFC (full case folding, so "ß"/"ss", "ſ"/"s" and the Kelvin
sign "K"/"k" match).

The resulting *key* is unique in the accounts table, so two accounts can never answer to the
same input. Mail is only ever sent to the address as stored, never to the string a client
typed: matching loosely is safe only because of that (GitHub's 2019 dotless-i reset bug sent
the link to the attacker's spelling).
"""

from __future__ import annotations

import functools
import unicodedata

import idna

MAX_ADDRESS_LENGTH = 254  # RFC 5321 §4.5.3.1.3 path limit minus the angle brackets
MAX_LOCAL_LENGTH = 64


# Whitespace, controls (Cc), invisible formatting such as zero-width spaces and bidi overrides
# (Cf), unassigned code points and surrogates: none belongs in an address a person types, and
# Cf characters would let two addresses that look the same on screen be different accounts.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cn", "Cs", "Co", "Zl", "Zp"}
# Characters that render as nothing but are not in those categories (Unicode's
# Default_Ignorable_Code_Point beyond Cf: combining grapheme joiner, Hangul fillers, Khmer
# inherent vowels, Mongolian and other variation selectors); unicodedata has no flag for them.
_INVISIBLE = frozenset(
    [
        *(0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFFA0),
        *range(0x180B, 0x1810),
        *range(0xFE00, 0xFE10),
        *range(0xE0100, 0xE01F0),
    ]
)


def _refused(ch: str) -> bool:
    return ch.isspace() or ord(ch) in _INVISIBLE or unicodedata.category(ch) in _REFUSED_CATEGORIES


def _holds_refused(text: str) -> bool:
    if text.isascii():
        # The only ASCII characters `_refused` refuses are the controls (Cc, all of them not
        # printable) and the space: the same answer with two C-level scans instead of a
        # Python call per character (the worker asks for every request of a flood).
        return " " in text or not text.isprintable()
    return any(_refused(ch) for ch in text)


def _split(raw: str) -> tuple[str, str] | None:
    text = raw.strip()
    if text.count("@") != 1:  # quoted local parts with "@" (RFC 5321 §4.1.2) are not taken
        return None
    local, _, domain = text.partition("@")
    domain = domain[:-1] if domain.endswith(".") else domain  # the FQDN's root dot
    if not local or not domain:
        return None
    if _holds_refused(local):
        return None
    ascii_domain = _ascii_domain(domain)
    if ascii_domain is None:
        return None
    return unicodedata.normalize("NFC", local), ascii_domain


@functools.lru_cache(maxsize=4096)
def _ascii_domain(domain: str) -> str | None:
    # Cached: the idna package is pure Python and the worker's costliest step per row, while
    # a few domains make up most addresses. Bounded, so a flood of new domains only evicts.
    try:
        ascii_domain = idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return None
    ascii_domain = ascii_domain.removesuffix(".")  # "。" maps to a root dot too
    return ascii_domain or None


def address_key(raw: str) -> str | None:
    """The matching key for `raw`, or None when `raw` is not an email address at all.

    Length limits apply to the key (folding can lengthen it: "ß" → "ss"), so every key is
    itself an address whose key is the same."""
    parts = _split(raw)
    if parts is None:
        return None
    local, domain = parts
    folded = unicodedata.normalize("NFC", local.casefold())
    key = f"{folded}@{domain}"
    if len(folded) > MAX_LOCAL_LENGTH or len(key) > MAX_ADDRESS_LENGTH:
        return None
    return key


def stored_form(raw: str) -> str:
    """How a new account's address is kept: trimmed, NFC, domain in its ASCII (IDNA) form.
    Only called on input that `address_key` accepted."""
    parts = _split(raw)
    if parts is None:
        raise ValueError("not an email address")
    local, domain = parts
    return f"{local}@{domain}"
