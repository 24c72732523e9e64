"""Settings and the server secret."""

from __future__ import annotations

import secrets
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from chaser_auth.config import (
    MIN_SECRET_BITS,
    ConfigurationError,
    Settings,
    estimated_bits,
    load_secret_key,
)


def settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(_env_file=None, secret_key_file=tmp_path / "var" / "secret_key", **values)


def test_secret_key_is_created_once_private_and_shared_by_concurrent_starts(
    tmp_path: Path,
) -> None:
    config = settings(tmp_path)
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: load_secret_key(config), range(8)))
    assert len(set(keys)) == 1
    assert len(keys[0]) >= 32
    path = tmp_path / "var" / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret_key"]  # no temporary left over
    assert load_secret_key(config) == keys[0]


def test_configured_secret_wins_and_must_be_long(tmp_path: Path) -> None:
    key = "Qm7-xR2vLk9_TzP4wNc8HbJ5sYd3Fg6aE1uVo0iK"
    assert load_secret_key(settings(tmp_path, secret_key=key)) == key.encode()
    assert not (tmp_path / "var").exists()
    with pytest.raises(ValidationError, match="at least 32"):
        settings(tmp_path, secret_key="short")


def test_short_secret_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "secret_key").write_text("short")
    with pytest.raises(ConfigurationError, match="at least 32"):
        load_secret_key(settings(tmp_path))


@pytest.mark.parametrize(
    "key",
    ["a" * 32, "k" * 48, "ab" * 16, "abc" * 16, "password" * 4, "Tr0ub4dor&3" * 3],
)
def test_a_predictable_secret_is_refused_however_long(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValidationError, match="too predictable"):
        settings(tmp_path, secret_key=key)


def test_every_generated_key_is_accepted(tmp_path: Path) -> None:
    """The key the service generates (and the command in docs/configuration.md prints) always
    passes: 1,000 fresh ones through the settings (2-3 ms each), and the rule's estimate over
    50,000 more."""
    for _ in range(1_000):
        key = secrets.token_urlsafe(32)
        assert settings(tmp_path, secret_key=key).secret_key is not None
    lowest = min(estimated_bits(secrets.token_urlsafe(32)) for _ in range(50_000))
    assert lowest >= MIN_SECRET_BITS


def test_predictable_secret_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "secret_key").write_text("ab" * 20 + "\n")
    with pytest.raises(ConfigurationError, match="too predictable"):
        load_secret_key(settings(tmp_path))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("rate_limit_reset_per_ip", "banana"),
        ("public_url", "localhost:8000"),
        ("public_url", "ftp://example.com"),
        ("smtp_url", "http://mail.example.com"),
        ("password_min_length", 4),
        ("mail_max_attempts", 0),
        ("mail_from", "Chaser"),
        ("mail_from", "no-reply@"),
        ("operator_address", "8001"),
        ("operator_address", "localhost"),
        ("operator_address", "127.0.0.1:65536"),
        ("operator_address", "::1:8001"),
        ("operator_address", "[localhost]:8001"),
        ("operator_address", "http://127.0.0.1:8001"),
    ],
)
def test_bad_values_are_refused(tmp_path: Path, name: str, value: object) -> None:
    with pytest.raises(ValidationError):
        settings(tmp_path, **{name: value})


def test_public_url_loses_its_trailing_slash(tmp_path: Path) -> None:
    assert settings(tmp_path, public_url="https://id.example.com/").public_url == (
        "https://id.example.com"
    )


@pytest.mark.parametrize(
    ("value", "host_port"),
    [
        ("127.0.0.1:8001", ("127.0.0.1", 8001)),
        (" 10.0.0.5:9100 ", ("10.0.0.5", 9100)),
        ("[::1]:0", ("::1", 0)),
        ("metrics.internal:8001", ("metrics.internal", 8001)),
        ("", None),  # off
    ],
)
def test_operator_address_is_host_and_port_or_empty(
    tmp_path: Path, value: str, host_port: tuple[str, int] | None
) -> None:
    assert settings(tmp_path, operator_address=value).operator_host_port == host_port


def test_operator_address_is_loopback_by_default(tmp_path: Path) -> None:
    assert settings(tmp_path).operator_host_port == ("127.0.0.1", 8001)
