"""Property tests (hypothesis) for the pure domain functions: address matching, tokens and the
password policy. No I/O, no argon2: every function here is a plain computation.

The example-based cases live in `test_addresses.py`, `test_tokens.py` and `test_passwords.py`;
these properties generate inputs from alphabets chosen to hit the rules (case folding that
changes length, canonical equivalence, full-width forms, IDNA, invisible characters) plus
arbitrary text. Inputs that once found a bug are pinned with `@example` (lone surrogates,
folding that lengthens a repeated unit, Greek case mappings, default-ignorable characters), so
the fixes stay fixed.
"""

from __future__ import annotations

import base64
import re
import string
import unicodedata
import uuid
from collections.abc import Callable

import idna
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from chaser_auth.domain.addresses import (
    MAX_ADDRESS_LENGTH,
    MAX_LOCAL_LENGTH,
    address_key,
    stored_form,
)
from chaser_auth.domain.passwords import MAX_LENGTH, PasswordPolicy, normalize
from chaser_auth.domain.tokens import (
    TOKEN_BYTES,
    derive,
    digest,
    is_well_formed,
    keyed_hash,
    new_token,
)

# No example database (nothing written under the project), no deadline (the first IDNA or
# blocklist call of a run is slow), and example counts sized to keep the file near 10 s.
FAST = settings(max_examples=150, deadline=None, database=None)
SLOW = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

EMAIL_COLUMN = 320  # users.email and users.email_key are String(320)


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def fold(text: str) -> str:
    """The local part's folding as `address_key` documents it: NFC, full case folding, NFC."""
    return nfc(nfc(text).casefold())


# -- address strategies -------------------------------------------------------------------------

# Each base character of a local part with spellings that must match it (same key): case,
# full case folding that changes length (ß → ss, ﬃ → ffi, ŉ → ʼn), compatibility letters that
# case folding maps (ſ, Kelvin sign, Ångström sign, Ohm sign), NFC against NFD.
RESPELLINGS: dict[str, list[str]] = {
    **{c: [c, c.upper()] for c in "abcdefghjlmnopqrtuvwxyz"},
    "i": ["i", "I"],
    "k": ["k", "K", "\u212a"],
    "s": ["s", "S", "\u017f"],
    "ß": ["ß", "ss", "SS", "Ss", "\u1e9e"],
    "é": ["é", "É", "e\u0301", "E\u0301"],
    "ü": ["ü", "Ü", "u\u0308", "U\u0308"],
    "å": ["å", "Å", "\u212b", "a\u030a"],
    "ç": ["ç", "Ç", "c\u0327"],
    "ø": ["ø", "Ø"],
    "ǰ": ["ǰ", "J\u030c", "j\u030c"],
    "ﬃ": ["ﬃ", "ffi", "FFI", "fFi"],
    "ŉ": ["ŉ", "\u02bcn", "\u02bcN"],
    "ω": ["ω", "Ω", "\u2126"],
    "σ": ["σ", "Σ", "ς"],
    "ı": ["ı"],  # dotless i is its own letter: no other spelling matches it
    **{c: [c] for c in "0123456789.+-_"},
}
# Domains (no ß: UTS #46 keeps it, so "SS" would be another domain) and, for each, spellings
# of the same domain: case, the ASCII (Punycode) form, full-width forms, the root dot.
BASE_DOMAINS = [
    "example.com",
    "bücher.example",
    "münchen.de",
    "例え.jp",
    "ドメイン.テスト",
    "ελληνικά.gr",
    "mail.sub.example.org",
]


def fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def domain_spellings(domain: str) -> list[str]:
    ascii_form = idna.encode(domain, uts46=True).decode("ascii")
    return [
        domain,
        domain.upper(),
        ascii_form,
        ascii_form.upper(),
        fullwidth(ascii_form),
        fullwidth(domain.upper()),
        domain + ".",
        ascii_form.replace(".", "。"),
    ]


WHITESPACE = st.text(alphabet=" \t\r\n\x0b\x0c\x1c\x85\u00a0\u2028\u3000", max_size=3)


@st.composite
def address_pairs(draw: st.DrawFn) -> tuple[str, str]:
    """Two spellings of one address: each base character and the domain respelled on its
    own, each side with its own surrounding whitespace."""
    bases = draw(st.lists(st.sampled_from(sorted(RESPELLINGS)), min_size=1, max_size=16))
    domain = draw(st.sampled_from(BASE_DOMAINS))
    spellings = domain_spellings(domain)

    def spell() -> str:
        local = "".join(draw(st.sampled_from(RESPELLINGS[c])) for c in bases)
        at = draw(st.sampled_from(spellings))
        return draw(WHITESPACE) + local + "@" + at + draw(WHITESPACE)

    return spell(), spell()


# Characters that stress the rules: accepted ones whose folding or normalization is subtle…
TRICKY_ACCEPTED = [
    *"aAzZ09.+-_'!#$%&*/=?^`{|}~",
    *"ßẞſ\u212aKkıİiI\u212bÅå\u2126ΩωΣσς",
    *"ΐǰﬃﬀŉᾳ\u0345\u0301\u0308\u0307\u030c\u0327",
    *"ＡａＺｚ０．。｡＠",
    "e\u0301",
    "J\u030c",
    *"\u034f\ufe0f\u180b\u3164\u115f",  # default-ignorable but not Cf
]
# …and ones that must be refused in a local part.
TRICKY_REFUSED = [
    *"\u200b\u200c\u200d\u200e\u202e\u2066\u00ad\ufeff\u2060\U000e0041",  # Cf
    *"\x00\x07\x1f\x7f\x85",  # Cc
    *"\ue000\U000f0000",  # Co
    *"\u0378\u0530\U0001fffe",  # Cn
    *"\ud800\udfff",  # Cs (lone surrogates)
    *" \t\n\u00a0\u2003\u3000\u2028\u2029",  # whitespace, Zl, Zp
    "@",
]
ANY_CHAR = st.one_of(
    st.sampled_from(TRICKY_ACCEPTED),
    st.sampled_from(TRICKY_ACCEPTED),
    st.sampled_from(TRICKY_ACCEPTED),
    st.sampled_from(TRICKY_REFUSED),
    st.characters(),
    st.integers(0xD800, 0xDFFF).map(chr),
)
tricky_text = st.lists(ANY_CHAR, max_size=24).map("".join)
domain_label = st.lists(
    st.sampled_from([*"abcxyz019-", *"üÜéßﬃＡａ例え\u00ad\u200b\u200d\u034f", "xn--"]),
    min_size=1,
    max_size=10,
).map("".join)
random_domain = st.lists(domain_label, min_size=1, max_size=4).map(lambda labels: ".".join(labels))


@st.composite
def tricky_addresses(draw: st.DrawFn) -> str:
    local = draw(tricky_text)
    domain = draw(st.one_of(st.sampled_from(BASE_DOMAINS), random_domain, tricky_text))
    return draw(WHITESPACE) + local + "@" + domain + draw(WHITESPACE)


any_input = st.one_of(
    address_pairs().map(lambda pair: pair[0]),
    tricky_addresses(),
    tricky_text,
    st.text(),
)


# -- addresses ----------------------------------------------------------------------------------


@SLOW
@given(any_input)
def test_address_key_never_raises(raw: str) -> None:
    """(d) For any text — lone surrogates included — the key is a str or None."""
    key = address_key(raw)
    assert key is None or isinstance(key, str)


@SLOW
@given(any_input)
def test_address_key_is_idempotent(raw: str) -> None:
    """(a) A key is an address whose key is itself; so is the stored form's."""
    key = address_key(raw)
    if key is None:
        return
    assert address_key(key) == key
    assert address_key(stored_form(raw)) == key


@SLOW
@given(any_input)
def test_key_and_stored_form_shape(raw: str) -> None:
    """Where defined: one "@", a non-empty NFC local part of at most 64 characters (after
    folding), an ASCII lowercase domain without the root dot, at most 254 in all; the stored
    form is NFC, trimmed, has the same ASCII domain, and fits the 320-character column."""
    key = address_key(raw)
    if key is None:
        return
    local, at, domain = key.partition("@")
    assert at == "@"
    assert "@" not in domain
    assert local
    assert unicodedata.is_normalized("NFC", local)
    assert len(local) <= MAX_LOCAL_LENGTH
    assert len(key) <= MAX_ADDRESS_LENGTH
    assert domain
    assert domain.isascii()
    assert domain == domain.lower()
    assert not domain.endswith(".")
    stored = stored_form(raw)
    assert stored == stored.strip()
    assert unicodedata.is_normalized("NFC", stored)
    assert stored.partition("@")[2] == domain
    assert len(stored) <= EMAIL_COLUMN


REFUSED_CATEGORIES = {"Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp"}


def refused(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) in REFUSED_CATEGORIES


@SLOW
@given(any_input)
def test_key_holds_no_invisible_control_or_unassigned_character(raw: str) -> None:
    """(c) No key contains whitespace or a Cc/Cf/Co/Cn/Cs/Zl/Zp character, and an input with
    one in its local part has no key.

    In the domain such characters are not refused: UTS #46 *ignores* some of them (soft
    hyphen, zero-width space, word joiner, BOM) and refuses the rest. The ignored ones vanish
    from the key and the stored form alike — see the next test — so they cannot make a second
    account either; the key is ASCII there in any case."""
    key = address_key(raw)
    if key is not None:
        assert not any(refused(ch) for ch in key)
    text = raw.strip()
    if text.count("@") == 1 and any(refused(ch) for ch in text.partition("@")[0]):
        assert key is None


IGNORED_IN_DOMAINS = "\u00ad\u200b\u2060\ufeff"


@FAST
@given(address_pairs(), st.lists(st.sampled_from(IGNORED_IN_DOMAINS), min_size=1), st.data())
def test_invisible_characters_uts46_ignores_in_the_domain_change_nothing(
    pair: tuple[str, str], invisible: list[str], data: st.DataObject
) -> None:
    raw = pair[0].strip()
    local, _, domain = raw.partition("@")
    for ch in invisible:
        at = data.draw(st.integers(0, len(domain)))
        domain = domain[:at] + ch + domain[at:]
    spiked = f"{local}@{domain}"
    assert address_key(spiked) == address_key(raw)
    assert address_key(spiked) is not None
    assert stored_form(spiked) == stored_form(raw)


@SLOW
@given(address_pairs())
def test_respellings_of_one_address_share_one_key(pair: tuple[str, str]) -> None:
    """Case, ß/ss/ẞ, ſ/s, Kelvin sign/K/k, Ångström/Ohm signs, NFC/NFD, ﬃ/ffi, IDN domain
    in Unicode, Punycode or full width, root dot, surrounding whitespace: one key."""
    one, other = pair
    assert address_key(one) is not None
    assert address_key(one) == address_key(other)


@SLOW
@given(st.one_of(address_pairs(), st.tuples(any_input, any_input)))
def test_equal_keys_mean_one_mailbox(pair: tuple[str, str]) -> None:
    """(b) If two inputs share a key, their stored forms are the same mailbox modulo the
    folding: the same ASCII domain, local parts equal after NFC + full case folding + NFC —
    and each stored form answers to that same key, so an account created from either one is
    found by the other and by nothing with another key."""
    one, other = pair
    key = address_key(one)
    if key is None or key != address_key(other):
        return
    local_one, _, domain_one = stored_form(one).partition("@")
    local_other, _, domain_other = stored_form(other).partition("@")
    assert domain_one == domain_other
    assert fold(local_one) == fold(local_other)
    assert address_key(stored_form(one)) == key
    assert address_key(stored_form(other)) == key


@st.composite
def accounts_and_input(draw: st.DrawFn) -> tuple[list[str], str]:
    """Addresses people registered with — respellings of a few addresses, so that collisions
    happen — and one typed address, often a respelling of a registered one."""
    pairs = draw(st.lists(address_pairs(), min_size=1, max_size=6))
    registered = [a for pair in pairs for a in pair]
    registered += draw(st.lists(tricky_addresses(), max_size=3))
    typed = draw(
        st.one_of(st.sampled_from([b for _, b in pairs]), st.sampled_from(registered), any_input)
    )
    return draw(st.permutations(registered)), typed


@FAST
@given(accounts_and_input())
def test_mail_only_ever_goes_to_a_stored_address(case: tuple[list[str], str]) -> None:
    """(e) The worker's rule over the real functions. Registration stores `stored_form(s)`
    under `address_key(s)` and refuses a key already taken; a reset for typed `t` goes to
    `accounts.get(address_key(t))`. The recipient is always one of the stored strings (the
    typed spelling is never used, unless it is itself exactly a stored one), answers to the
    typed key, and no other account does."""
    registered, typed = case
    accounts: dict[str, str] = {}
    for raw in registered:
        key = address_key(raw)
        if key is not None and key not in accounts:  # a taken key is refused
            accounts[key] = stored_form(raw)
    stored = set(accounts.values())

    typed_key = address_key(typed)
    recipient = accounts.get(typed_key) if typed_key is not None else None
    if recipient is None:
        assert typed_key not in accounts
        return
    assert recipient in stored
    assert recipient != typed or typed in stored
    assert address_key(recipient) == typed_key
    answering = [s for s in stored if address_key(s) == typed_key]
    assert answering == [recipient]


# Default_Ignorable_Code_Point characters that are not Cf (so `_REFUSED_CATEGORIES` lets them
# through): combining grapheme joiner, Hangul fillers, Khmer inherent vowels, Mongolian and
# standard variation selectors. They render as nothing.
DEFAULT_IGNORABLE_NOT_CF = [
    "\u034f",
    "\u115f",
    "\u1160",
    "\u17b4",
    "\u17b5",
    "\u180b",
    "\u180c",
    "\u180d",
    "\u180f",
    "\u3164",
    "\uffa0",
    *(chr(c) for c in range(0xFE00, 0xFE10)),
    "\U000e0100",
    "\U000e01ef",
]


@FAST
@given(address_pairs(), st.sampled_from(DEFAULT_IGNORABLE_NOT_CF), st.data())
@example(("ab@example.com", "ab@example.com"), "\u034f", None)
def test_key_refuses_every_invisible_character_in_the_local_part(
    pair: tuple[str, str], invisible: str, data: st.DataObject | None
) -> None:
    """What the module docstring promises for Cf ("two addresses that look the same on
    screen" must not be two accounts), for every character Unicode says renders as nothing."""
    local, _, domain = pair[0].strip().partition("@")
    at = 1 if data is None else data.draw(st.integers(0, len(local)))
    spiked = f"{local[:at]}{invisible}{local[at:]}@{domain}"
    assert address_key(spiked) is None


# -- tokens -------------------------------------------------------------------------------------

B64URL = string.ascii_letters + string.digits + "-_"
LOOKALIKES = "=+/. \t\n\r\x00éÅＡ０\u0661\u00b2\u212a\u0130\u017f\u200b"
token_like = st.one_of(
    st.text(alphabet=B64URL, min_size=38, max_size=135),
    st.text(alphabet=B64URL + LOOKALIKES, min_size=38, max_size=135),
    st.tuples(
        st.text(alphabet=B64URL, min_size=20, max_size=70),
        st.sampled_from(LOOKALIKES),
        st.text(alphabet=B64URL, min_size=0, max_size=70),
    ).map("".join),
    st.binary(max_size=140).map(lambda raw: raw.decode("latin-1")),
    st.binary(max_size=140).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
    st.text(max_size=140),
)


@SLOW
@given(token_like)
def test_well_formed_is_exactly_43_to_128_base64url_characters(token: str) -> None:
    """The bound is the module's TOKEN_PATTERN, {43,128}: 256 bits is 43 characters, and the
    128 cap keeps an oversized string from reaching the digest and the database."""
    expected = 43 <= len(token) <= 128 and all(c in B64URL for c in token)
    assert is_well_formed(token) is expected


@FAST
@given(st.integers(min_value=1, max_value=64))
def test_fresh_tokens_are_well_formed_unpadded_and_carry_32_bytes(count: int) -> None:
    """`new_token` from the real CSPRNG: 43 characters, well-formed, unpadded, 32 bytes."""
    tokens = [new_token() for _ in range(count)]
    for token in tokens:
        assert len(token) == 43
        assert is_well_formed(token)
        assert len(base64.urlsafe_b64decode(token + "=")) == TOKEN_BYTES
    assert len(set(tokens)) == count


def assume_encodable(*texts: str) -> None:
    for text in texts:
        try:
            text.encode()
        except UnicodeEncodeError:
            assume(False)


# Server secrets as configured: at least 32 characters of a setting or key file, encoded.
# (No NUL: HMAC pads short keys with zeros, so b"k" and b"k\0" are one key by design.)
server_secret = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=32, max_size=80
).map(str.encode)
purpose = st.one_of(st.sampled_from(["password_reset", "verify_email"]), st.text(max_size=20))


@FAST
@given(server_secret, purpose, st.uuids())
def test_derive_is_deterministic_and_well_formed(secret: bytes, kind: str, job: uuid.UUID) -> None:
    token = derive(secret, kind, job)
    assert token == derive(secret, kind, job)
    assert len(token) == 43
    assert is_well_formed(token)


@FAST
@given(server_secret, server_secret, purpose, purpose, st.uuids(), st.uuids())
def test_derive_differs_across_secrets_purposes_and_jobs(
    secret: bytes, other_secret: bytes, kind: str, other_kind: str, job: uuid.UUID, other: uuid.UUID
) -> None:
    token = derive(secret, kind, job)
    if other_secret != secret:
        assert derive(other_secret, kind, job) != token
    if other_kind != kind:
        assert derive(secret, other_kind, job) != token
    if other != job:
        assert derive(secret, kind, other) != token


@FAST
@given(server_secret, token_like, token_like)
def test_digest_is_stable_hex_and_never_the_token(secret: bytes, token: str, other: str) -> None:
    """Only well-formed tokens reach `digest` (the services check `is_well_formed` first);
    here any text that encodes, so lone surrogates are left out."""
    assume_encodable(token, other)
    stored = digest(secret, token)
    assert stored == digest(secret, token)
    assert re.fullmatch(r"[0-9a-f]{64}", stored)
    assert stored != token
    if other != token:
        assert digest(secret, other) != stored


@FAST
@given(server_secret, any_input)
def test_keyed_hash_is_a_stable_32_hex_pseudonym(secret: bytes, value: str) -> None:
    assume_encodable(value)  # lone surrogates: see test_keyed_hash_never_raises
    pseudonym = keyed_hash(secret, value)
    assert pseudonym == keyed_hash(secret, value)
    assert re.fullmatch(r"[0-9a-f]{32}", pseudonym)


@FAST
@given(server_secret, any_input)
@example(b"s" * 32, "a\ud800@example.com")
def test_keyed_hash_never_raises(secret: bytes, value: str) -> None:
    """JSON allows "\\ud800" and Starlette's json.loads keeps it: a request body can carry a
    lone surrogate in "email" straight to `keyed_hash(secret, address_key(email) or email)`."""
    assert re.fullmatch(r"[0-9a-f]{32}", keyed_hash(secret, value))


# -- password policy ----------------------------------------------------------------------------

POLICY = PasswordPolicy(min_length=15)
EMAIL = "someone.long@example.com"
KNOWN_CODES = {"too_short", "too_long", "matches_email", "repetitive", "common"}


def messages(policy: PasswordPolicy) -> set[str]:
    return {
        f"Use at least {policy.min_length} characters.",
        f"Use at most {MAX_LENGTH} characters.",
        "Do not use your email address.",
        "Do not repeat the same few characters.",
        "This password is commonly used or has appeared in a breach.",
    }


def codes(password: str, email: str = EMAIL, policy: PasswordPolicy = POLICY) -> list[str]:
    return [problem["code"] for problem in policy.problems(password, email)]


# Text without lone surrogates (those have their own property), with combining marks, case-folding
# expanders and long runs, in lengths around every boundary (10, 15, 128).
PW_CHARS = st.one_of(
    st.sampled_from([*"aAbz09 !.", *"éÉ\u0301\u0308ßﬃİıΐǰŉΣς", "e\u0301"]),
    st.characters(exclude_categories=["Cs"]),
)
password_text = st.one_of(
    st.lists(PW_CHARS, max_size=40).map("".join),
    st.lists(PW_CHARS, min_size=120, max_size=140).map("".join),
    st.text(max_size=200),
)
policies = st.integers(min_value=1, max_value=64).map(lambda n: PasswordPolicy(min_length=n))


@SLOW
@given(password_text, st.one_of(st.just(EMAIL), tricky_text, any_input))
def test_problems_never_raises_and_lists_coded_messages(password: str, email: str) -> None:
    problems = POLICY.problems(password, email)
    assert isinstance(problems, list)
    for problem in problems:
        assert isinstance(problem, dict)
        assert problem["code"] in KNOWN_CODES
        assert problem["message"] in messages(POLICY)
        assert set(problem) <= {"code", "message", "min_length", "max_length"}
    assert len({p["code"] for p in problems}) == len(problems)


@FAST
@given(st.lists(st.one_of(PW_CHARS, st.integers(0xD800, 0xDFFF).map(chr)), max_size=40))
@example(["abcdefghijklmno", "\ud800"])
def test_problems_never_raises_on_lone_surrogates(pieces: list[str]) -> None:
    """JSON allows "\ud800", json.loads keeps it and pydantic's `str` takes it, so a request
    body can hand `problems` (and argon2) a string that UTF-8 cannot encode."""
    POLICY.problems("".join(pieces), EMAIL)


@FAST
@given(password_text, policies)
def test_length_verdicts_count_nfc_code_points(password: str, policy: PasswordPolicy) -> None:
    found = codes(password, policy=policy)
    length = len(nfc(password))
    assert ("too_short" in found) is (length < policy.min_length)
    assert ("too_long" in found) is (length > MAX_LENGTH)


@FAST
@given(password_text)
def test_nfc_and_nfd_spellings_get_the_same_verdict(password: str) -> None:
    verdict = POLICY.problems(password, EMAIL)
    assert POLICY.problems(nfc(password), EMAIL) == verdict
    assert POLICY.problems(unicodedata.normalize("NFD", password), EMAIL) == verdict
    assert normalize(unicodedata.normalize("NFD", password)) == normalize(password)


@FAST
@given(password_text, policies)
def test_reasons_never_echo_the_password(password: str, policy: PasswordPolicy) -> None:
    """Every message is one of the fixed templates, so nothing about the password is echoed;
    and no value of a reason contains the password (unless it is a piece of a template)."""
    templates = " ".join(messages(policy))
    for problem in policy.problems(password, EMAIL):
        assert problem["message"] in messages(policy)
        if len(password) >= 3 and password not in templates:
            assert all(password not in str(value) for value in problem.values())


# Addresses as the policy receives them (`stored_form`), over letters whose case mappings stay
# within canonical equivalence (no ı: its uppercase I folds to i; Greek has its own property).
SAFE_LOCAL = [c for c in RESPELLINGS if c not in "ıΐωσ"]


@st.composite
def stored_addresses(draw: st.DrawFn, letters: list[str]) -> str:
    local = "".join(draw(st.lists(st.sampled_from(letters), min_size=1, max_size=20)))
    domain = draw(st.sampled_from(BASE_DOMAINS))
    return stored_form(f"{local}@{domain}")


CASINGS = [str, str.upper, str.lower, str.swapcase, str.title, str.casefold]


@SLOW
@given(stored_addresses(SAFE_LOCAL), st.sampled_from(CASINGS), st.booleans())
def test_password_equal_to_the_address_in_any_case_is_refused(
    email: str, casing: Callable[[str], str], local_only: bool
) -> None:
    password = casing(email.partition("@")[0] if local_only else email)
    assert "matches_email" in codes(password, email)


@FAST
@given(stored_addresses([*SAFE_LOCAL, "ΐ", "ΰ", "ω", "σ"]), st.sampled_from(CASINGS))
@example("\u0390abcdefghijklmno@example.com", str.upper)
def test_password_equal_to_the_address_in_any_case_is_refused_for_greek(
    email: str, casing: Callable[[str], str]
) -> None:
    assert "matches_email" in codes(casing(email), email)


REPEAT_UNIT_CHARS = [*string.ascii_letters, *string.digits, *" !.-_", *"éÜåçøñ€→中"]


@SLOW
@given(
    st.lists(st.sampled_from(REPEAT_UNIT_CHARS), min_size=1, max_size=4).map("".join),
    st.integers(min_value=2, max_value=40),
)
def test_a_short_unit_repeated_is_refused(unit: str, times: int) -> None:
    """One character, or a unit of up to 4, repeated — in any case mix."""
    password = unit * times
    assert "repetitive" in codes(password)
    assert "repetitive" in codes(password.swapcase()[: len(unit)] + password[len(unit) :])


@FAST
@given(
    st.lists(st.sampled_from([*"abc1", *"ßİﬃŉẞΐǰ"]), min_size=1, max_size=4).map("".join),
    st.integers(min_value=2, max_value=20),
)
@example("ßabc", 4)
def test_a_short_unit_repeated_is_refused_when_folding_lengthens_it(unit: str, times: int) -> None:
    assert "repetitive" in codes(unit * times)
