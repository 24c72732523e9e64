"""How a typed email address is matched to a stored one (`address_key`) and how a new account's
address is kept (`stored_form`).

`hypothesis` is not installed in the project's environment, so the "for any text" properties
are checked over a large seeded corpus of generated text instead (stdlib `random`, fixed seed:
the same inputs on every run, so a failure is reproducible).
"""

from __future__ import annotations

import random
import unicodedata

import pytest

from chaser_auth.domain.addresses import address_key, stored_form

# Domain labels of 63 characters, the most DNS allows, to build long but valid addresses.
LABEL_B, LABEL_C = "b" * 63, "c" * 63


def long_address(total: int) -> str:
    """A syntactically valid address of exactly `total` characters (local part of 64)."""
    last = total - 64 - 1 - len(LABEL_B) - 1 - len(LABEL_C) - 1
    address = f"{'a' * 64}@{LABEL_B}.{LABEL_C}.{'d' * last}"
    assert len(address) == total
    return address


# -- equal keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        pytest.param("  user@example.com \n", "user@example.com", id="surrounding-whitespace"),
        pytest.param("\tuser@example.com\r\n", "user@example.com", id="tabs-and-crlf"),
        pytest.param("user@EXAMPLE.COM", "user@example.com", id="domain-case"),
        pytest.param("user@BÜCHER.example", "user@xn--bcher-kva.example", id="idna-domain"),
        pytest.param("user@bücher.example", "user@xn--bcher-kva.example", id="idna-lower"),
        pytest.param("Alice@example.com", "alice@example.com", id="local-case"),
        pytest.param("STRASSE@x.org", "straße@x.org", id="sharp-s-full-folding"),
        pytest.param("\u212aelvin@x.org", "kelvin@x.org", id="kelvin-sign"),
        pytest.param("\u017fam@x.org", "sam@x.org", id="long-s"),
        pytest.param("caf\u00e9@x.org", "cafe\u0301@x.org", id="nfc-vs-nfd"),
        pytest.param("CAFE\u0301@x.org", "caf\u00e9@x.org", id="nfd-upper-vs-nfc-lower"),
        pytest.param("user@ｅｘａｍｐｌｅ.com", "user@example.com", id="fullwidth-domain"),
        pytest.param(
            "user@ＥＸＡＭＰＬＥ．ＣＯＭ", "user@example.com", id="fullwidth-upper-and-dot"
        ),
    ],
)
def test_spellings_of_one_address_share_one_key(typed: str, canonical: str) -> None:
    key = address_key(typed)
    assert key is not None
    assert key == address_key(canonical)


def test_key_is_the_folded_local_part_at_the_ascii_domain() -> None:
    assert address_key(" STRASSE@BÜCHER.example ") == "strasse@xn--bcher-kva.example"
    assert address_key("Straße@x.org") == "strasse@x.org"
    assert address_key("\u212a@x.org") == "k@x.org"
    assert address_key("cafe\u0301@x.org") == "caf\u00e9@x.org"


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("alice@example.com", "alicia@example.com"),
        ("alice@example.com", "alice@example.org"),
        ("alice@example.com", "al.ice@example.com"),  # no provider-specific dot rules
        ("alice@example.com", "alice+x@example.com"),  # no sub-addressing rules
        ("i@x.org", "ı@x.org"),  # dotless i is its own letter
    ],
)
def test_different_addresses_have_different_keys(one: str, other: str) -> None:
    assert address_key(one) is not None
    assert address_key(other) is not None
    assert address_key(one) != address_key(other)


# -- not addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("userexample.com", id="no-at"),
        pytest.param("@example.com", id="empty-local"),
        pytest.param("user@", id="empty-domain"),
        pytest.param("user@   ", id="blank-domain"),
        pytest.param("us er@example.com", id="space-in-local"),
        pytest.param("us\ter@example.com", id="tab-in-local"),
        pytest.param("us\u00a0er@example.com", id="nbsp-in-local"),
        pytest.param("us\u2003er@example.com", id="em-space-in-local"),
        pytest.param("us\x00er@example.com", id="nul-in-local"),
        pytest.param("us\x07er@example.com", id="bell-in-local"),
        pytest.param("us\x7fer@example.com", id="del-in-local"),
        pytest.param("us\x85er@example.com", id="c1-control-in-local"),
        pytest.param("user@exa mple.com", id="space-in-domain"),
        pytest.param("user@example.com\x00", id="nul-in-domain"),
        pytest.param("a@-bad-.com", id="hyphen-edged-label"),
        pytest.param("a@x..org", id="empty-label"),
        pytest.param("a@.x.org", id="leading-dot"),
        pytest.param(f"a@{'b' * 64}.com", id="label-over-63"),
        pytest.param(f"{'a' * 65}@example.com", id="local-over-64"),
        pytest.param(long_address(255), id="over-254"),
    ],
)
def test_non_addresses_have_no_key(raw: str) -> None:
    assert address_key(raw) is None


def test_every_ascii_character_in_a_local_part_is_judged_by_the_character_rule() -> None:
    """ASCII local parts take a shortcut past the per-character check (`_holds_refused`): for
    each of the 128 characters but "@", inside a local part, the answer must be the rule's own —
    no key exactly for the controls and the space."""
    for ch in map(chr, range(128)):
        if ch == "@":
            continue
        refused = ch.isspace() or unicodedata.category(ch) == "Cc"
        assert (address_key(f"a{ch}b@example.com") is None) == refused, repr(ch)
        assert (address_key(f"a{ch}b\u00e9@example.com") is None) == refused, repr(ch)


def test_length_limits_are_inclusive() -> None:
    assert address_key(long_address(254)) == long_address(254)
    assert address_key(f"{'a' * 64}@example.com") == f"{'a' * 64}@example.com"


# -- stored form --------------------------------------------------------------------------------


def test_stored_form_keeps_the_local_case_and_ascii_encodes_the_domain() -> None:
    assert stored_form(" Straße@BÜCHER.example ") == "Straße@xn--bcher-kva.example"
    assert stored_form("Alice.Smith@Example.COM") == "Alice.Smith@example.com"
    assert stored_form("user@ｅｘａｍｐｌｅ.com") == "user@example.com"


def test_stored_form_is_nfc() -> None:
    stored = stored_form("Cafe\u0301@x.org")
    assert stored == "Caf\u00e9@x.org"
    assert unicodedata.is_normalized("NFC", stored)


def test_stored_form_matches_the_same_key_as_what_was_typed() -> None:
    for typed in (" Straße@BÜCHER.example ", "Cafe\u0301@X.org", "\u212aelvin@ｅｘａｍｐｌｅ.com"):
        assert address_key(stored_form(typed)) == address_key(typed)


# -- properties over generated text -------------------------------------------------------------

# Characters chosen to hit every rule: characters whose case folding lengthens or changes them,
# combining marks, full-width forms, IDNA-significant punctuation, invisible format characters;
# the separator; whitespace and controls; and any code point at all, surrogates included.
LETTERS: list[str] = [
    *"abcXYZ019.-_+",
    *"ßſ\u212aİıﬃΐǰΩΣςÜü",
    *"\u00e9\u0301\u0307\u0345ᾳ",
    *"ＡＥｘ．。",
    *"\u200b\u200d\u202e\ufeff",
]
BREAKERS: list[str] = [*" \t\n\r\x00\x07\x7f\x85\u00a0\u2028"]
DOMAINS = ["example.com", "BÜCHER.example", "ＥＸＡＭＰＬＥ.org", "-bad-.com", "x..org"]


def generated_text(rng: random.Random, longest: int) -> str:
    def one() -> str:
        draw = rng.random()
        if draw < 0.80:
            return rng.choice(LETTERS)
        if draw < 0.88:
            return chr(rng.randrange(0x110000))
        if draw < 0.94:
            return "@"
        return rng.choice(BREAKERS)

    return "".join(one() for _ in range(rng.randrange(longest + 1)))


def corpus(seed: int, *, count: int, longest_local: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        shape = rng.random()
        if shape < 0.25:  # any text at all
            texts.append(generated_text(rng, 40))
        else:  # something shaped like an address, so that many inputs do have a key
            domain = rng.choice([*DOMAINS, generated_text(rng, 12) + ".org"])
            texts.append(generated_text(rng, longest_local) + "@" + domain)
    return texts


def test_key_of_any_text_is_none_or_a_local_part_at_an_ascii_domain() -> None:
    keyed = 0
    for raw in corpus(20261127, count=12000, longest_local=80):
        key = address_key(raw)
        if key is None:
            continue
        keyed += 1
        local, at, domain = key.rpartition("@")
        assert at == "@", raw
        assert local, raw
        assert domain, raw
        assert domain.isascii(), raw
        assert domain == domain.lower(), raw
        assert not any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in key), raw
        assert unicodedata.is_normalized("NFC", local), raw
    assert keyed > 50, "the corpus hardly exercises the keyed path"


def test_key_is_idempotent() -> None:
    keyed = 0
    for raw in corpus(5361, count=6000, longest_local=80):
        key = address_key(raw)
        if key is None:
            continue
        keyed += 1
        assert address_key(key) == key, raw
    assert keyed > 50, "the corpus hardly exercises the keyed path"


def test_key_has_exactly_one_at_sign() -> None:
    key = address_key("a@b@x.org")
    assert key is None or key.count("@") == 1


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("ß" * 33 + "@x.org", id="casefold-lengthens-local-past-64"),
        pytest.param(
            "a" * 64 + "@" + ".".join(["bücher-straße-müller-östlich"] * 5) + ".de",
            id="idna-lengthens-address-past-254",
        ),
    ],
)
def test_key_is_idempotent_when_folding_lengthens_it(raw: str) -> None:
    key = address_key(raw)
    assert key is None or address_key(key) == key


def test_key_fits_the_email_key_column() -> None:
    raw = "ﬃ" * 64 + "@" + long_address(254).partition("@")[2]
    assert len(raw) == 254
    key = address_key(raw)
    assert key is None or len(key) <= 320
