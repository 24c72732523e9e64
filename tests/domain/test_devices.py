"""`devices`: the User-Agent described briefly, the address coarsened to its network."""

from __future__ import annotations

import pytest

from chaser_auth.domain.devices import MAX_DESCRIPTION, coarsen, describe


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        (
            "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
            "Firefox 133 on Ubuntu",
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like "
            "Gecko) Chrome/131.0.0.0 Safari/537.36",
            "Chrome 131 on Mac OS X 10",
        ),
        ("curl/8.5.0", "curl 8"),
        ("", "Unknown client"),
        (None, "Unknown client"),
        ("something nobody knows", "Unknown client"),
    ],
)
def test_describe(agent: str | None, expected: str) -> None:
    assert describe(agent) == expected


def test_a_huge_user_agent_is_cut_and_the_description_short() -> None:
    assert len(describe("Mozilla/5.0 " + "x" * 100_000)) <= MAX_DESCRIPTION


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("203.0.113.77", "203.0.113.0/24"),
        ("2001:db8:1234:5678::1", "2001:db8:1234::/48"),
        ("::ffff:198.51.100.9", "198.51.100.0/24"),
        ("fe80::1%eth0", "fe80::/48"),
        ("unknown", None),
    ],
)
def test_coarsen(address: str, expected: str | None) -> None:
    assert coarsen(address) == expected
