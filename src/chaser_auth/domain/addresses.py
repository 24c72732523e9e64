"""How an email address typed by a person is matched to the address stored on an account.

The rule (SPEC §2.1), applied to the registration check and to every look-up alike:
trim the string; split at the last "@"; the domain is lowercased and IDNA-encoded (UTS #46,
which also folds full-width forms); the local part is compared case-insensitively after
Unicode NFC (full case folding, so "ß"/"ss", "ſ"/"s" and the Kelvin sign "K"/"k" match).

The resulting *key* is unique in the accounts table, so two accounts can never answer to the
same input. Mail is only ever sent to the address as stored, never to the string a client
typed: matching loosely is safe only because of that (GitHub's 2019 dotless-i reset bug sent
the link to the attacker's spelling).
"""

from __future__ import annotations

import unicodedata

import idna

MAX_ADDRESS_LENGTH = 254  # RFC 5321 §4.5.3.1.3 path limit minus the angle brackets
MAX_LOCAL_LENGTH = 64


def address_key(raw: str) -> str | None:
    """The matching key for `raw`, or None when `raw` is not an email address at all."""
    text = raw.strip()
    if len(text) > MAX_ADDRESS_LENGTH or text.count("@") < 1:
        return None
    local, _, domain = text.rpartition("@")
    if not local or not domain or len(local) > MAX_LOCAL_LENGTH:
        return None
    if any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in local):
        return None
    try:
        ascii_domain = idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return None
    folded = unicodedata.normalize("NFC", unicodedata.normalize("NFC", local).casefold())
    return f"{folded}@{ascii_domain}"


def stored_form(raw: str) -> str:
    """How a new account's address is kept: trimmed, NFC, domain in its ASCII (IDNA) form."""
    local, _, domain = raw.strip().rpartition("@")
    ascii_domain = idna.encode(domain, uts46=True).decode("ascii")
    return f"{unicodedata.normalize('NFC', local)}@{ascii_domain}"
