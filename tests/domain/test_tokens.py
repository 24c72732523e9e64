"""Bearer secrets: minting, deriving, digesting and the shape check."""

from __future__ import annotations

import re
import uuid

import pytest

from chaser_auth.domain.tokens import derive, digest, is_well_formed, new_token

SECRET = b"test-secret-key-with-enough-entropy-0123456789"
OTHER_SECRET = b"another-secret-key-with-enough-entropy-9876543"
JOB = uuid.UUID("6f1c1f0e-8a51-4a53-9d8e-2b1f1a0c5e77")
ALPHABET = re.compile(r"[A-Za-z0-9_-]+")


def test_new_token_is_43_characters_of_base64url() -> None:
    for _ in range(200):
        token = new_token()
        assert len(token) == 43
        assert ALPHABET.fullmatch(token), token


def test_new_token_differs_on_every_call() -> None:
    tokens = {new_token() for _ in range(1000)}
    assert len(tokens) == 1000


def test_new_tokens_use_the_whole_alphabet() -> None:
    # 256 random bits per token: over many tokens every one of the 64 symbols shows up,
    # including the two that differ from standard base64.
    seen = set("".join(new_token() for _ in range(500)))
    assert len(seen) == 64
    assert {"-", "_"} <= seen


def test_derive_is_deterministic_and_well_formed() -> None:
    token = derive(SECRET, "password_reset", JOB)
    assert token == derive(SECRET, "password_reset", JOB)
    assert len(token) == 43
    assert is_well_formed(token)


def test_derive_depends_on_secret_purpose_and_job() -> None:
    base = derive(SECRET, "password_reset", JOB)
    variants = {
        derive(OTHER_SECRET, "password_reset", JOB),
        derive(SECRET, "verify_email", JOB),
        derive(SECRET, "password_reset", uuid.UUID(int=JOB.int ^ 1)),
        derive(SECRET, "password_reset", uuid.uuid4()),
    }
    assert base not in variants
    assert len(variants) == 4


def test_digest_is_not_the_token_and_is_deterministic() -> None:
    token = new_token()
    stored = digest(SECRET, token)
    assert stored != token
    assert token not in stored
    assert stored == digest(SECRET, token)
    assert re.fullmatch(r"[0-9a-f]{64}", stored)


def test_digest_depends_on_the_secret_and_the_token() -> None:
    token = new_token()
    assert digest(SECRET, token) != digest(OTHER_SECRET, token)
    assert digest(SECRET, token) != digest(SECRET, new_token())


def test_digest_differs_from_derive_for_the_same_secret() -> None:
    # A leaked digest must not be usable as the link token it stands for.
    token = derive(SECRET, "password_reset", JOB)
    assert digest(SECRET, token) != token


@pytest.mark.parametrize("length", [43, 44, 64, 127, 128])
def test_well_formed_accepts_43_to_128_alphabet_characters(length: int) -> None:
    assert is_well_formed(("Ab9_-" * 30)[:length])


def test_minted_and_derived_tokens_are_well_formed() -> None:
    assert all(is_well_formed(new_token()) for _ in range(100))
    assert is_well_formed(derive(SECRET, "password_reset", JOB))


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("A" * 42, id="42-chars"),
        pytest.param("A" * 129, id="129-chars"),
        pytest.param("A" * 42 + "=", id="padding-43"),
        pytest.param("A" * 43 + "=", id="padding-44"),
        pytest.param("A" * 42 + "==", id="double-padding"),
        pytest.param("A" * 21 + " " + "A" * 21, id="inner-space"),
        pytest.param(" " + "A" * 43, id="leading-space"),
        pytest.param("A" * 43 + " ", id="trailing-space"),
        pytest.param("A" * 43 + "\n", id="trailing-newline"),
        pytest.param("A" * 42 + "+", id="standard-base64-plus"),
        pytest.param("A" * 42 + "/", id="standard-base64-slash"),
        pytest.param("A" * 42 + "é", id="latin-letter"),
        pytest.param("A" * 42 + "Ａ", id="fullwidth-letter"),
        pytest.param("A" * 42 + "\u0661", id="arabic-indic-digit"),
        pytest.param("A" * 42 + "\u00b2", id="superscript-two"),
        pytest.param("A" * 42 + "\u212a", id="kelvin-sign"),
        pytest.param("A" * 42 + ".", id="dot"),
    ],
)
def test_well_formed_refuses_anything_else(token: str) -> None:
    assert not is_well_formed(token)


def test_well_formed_refuses_a_real_token_with_padding() -> None:
    token = new_token()
    assert is_well_formed(token)
    assert not is_well_formed(token + "=")
