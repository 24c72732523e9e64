"""Settings: read once from the environment (and `.env`), then passed in — never a module global.

Every field maps to `CHASER_AUTH_<FIELD>`; the README's configuration table is this class.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import math
import os
import re
import secrets
import tempfile
from collections import Counter
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from limits import RateLimitItem, parse
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SECRET_KEY_BYTES = 32
MIN_SECRET_LENGTH = 32
MIN_SECRET_BITS = 128
KEY_COMMAND = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def estimated_bits(key: str) -> float:
    """A Shannon estimate of a key's entropy in bits: its length times the entropy of its own
    character frequencies, -Σ count·log2(count / length).

    It catches a key made of one or a few characters ("aaaa…", "abab…", a word repeated),
    which a length check lets through. It cannot see a pattern spread over many characters
    ("0123456789abcdef…" estimates at 4 bits a character), so it refuses only what is
    clearly weak and proves nothing about the rest. A random key estimates below its true
    entropy, the more so the shorter it is: 16 random bytes in hex (32 characters, 128 bits)
    can never reach 128, while the generated key, `secrets.token_urlsafe(32)` (43 characters,
    256 bits), estimates at about 210 and in 100,000 draws never went below 180."""
    counts = Counter(key)
    return -sum(count * math.log2(count / len(key)) for count in counts.values())


def _rate(value: str) -> str:
    parse(value)  # raises ValueError on a string the `limits` library cannot read
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHASER_AUTH_",
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    database_url: str = "sqlite+aiosqlite:///./var/chaser-auth.db"
    redis_url: str | None = None
    redis_key_prefix: str = "chaser-auth"
    smtp_url: str | None = None
    smtp_timeout: Annotated[float, Field(gt=0)] = 10.0
    mail_from: str = "Chaser <no-reply@localhost>"
    mail_dir: Path = Path("./var/mail")
    templates_dir: Path | None = None
    public_url: str = "http://localhost:8000"
    # Where /metrics (and /healthz, /readyz) are served apart from the public API; "" = off.
    operator_address: str = "127.0.0.1:8001"
    app_url: str | None = None
    secret_key: SecretStr | None = None
    secret_key_file: Path = Path("./var/secret_key")

    reset_token_ttl: Annotated[int, Field(gt=0)] = 1800
    verify_token_ttl: Annotated[int, Field(gt=0)] = 86400
    session_idle_ttl: Annotated[int, Field(gt=0)] = 604800
    session_max_ttl: Annotated[int, Field(gt=0)] = 2592000

    rate_limit_reset_per_ip: str = "10/minute"
    rate_limit_reset_per_address: str = "3/hour"
    rate_limit_login: str = "10/minute"
    rate_limit_login_per_ip: str = "30/minute"
    rate_limit_login_per_account: str = "100/hour"
    rate_limit_token_per_ip: str = "30/minute"  # noqa: S105 - a rate, not a secret
    rate_limit_register_per_ip: str = "20/hour"
    trusted_proxies: str | None = None

    password_min_length: Annotated[int, Field(ge=8, le=128)] = 15
    notify_unknown: bool = False

    mail_max_attempts: Annotated[int, Field(ge=1)] = 8
    mail_retry_base: Annotated[float, Field(gt=0)] = 5.0
    mail_retry_max: Annotated[float, Field(gt=0)] = 3600.0
    mail_rate: str | None = None
    worker_poll_interval: Annotated[float, Field(gt=0)] = 1.0
    worker_lease: Annotated[int, Field(gt=0)] = 120
    embedded_worker: bool = True

    # argon2id cost (RFC 9106 "second recommended option" by default: t=3, m=64 MiB, p=4).
    argon2_time_cost: Annotated[int, Field(ge=1)] = 3
    argon2_memory_cost: Annotated[int, Field(ge=8)] = 65536
    argon2_parallelism: Annotated[int, Field(ge=1)] = 4

    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    audit_retention_days: Annotated[int, Field(ge=1)] = 90
    outbox_retention_hours: Annotated[int, Field(ge=1)] = 168
    unmatched_retention_hours: Annotated[int, Field(ge=1)] = 24

    @field_validator(
        "rate_limit_reset_per_ip",
        "rate_limit_reset_per_address",
        "rate_limit_login",
        "rate_limit_login_per_ip",
        "rate_limit_login_per_account",
        "rate_limit_token_per_ip",
        "rate_limit_register_per_ip",
        "mail_rate",
    )
    @classmethod
    def _rate_string(cls, value: str | None) -> str | None:
        return value if value is None else _rate(value)

    @field_validator("public_url", "app_url")
    @classmethod
    def _absolute_http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http(s) URL")
        return value.rstrip("/")

    @field_validator("secret_key")
    @classmethod
    def _strong_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # Reset links are HMACs of this key and a row id that the database holds: a guessable
        # key plus a stolen database would mint valid links.
        if value is None:
            return None
        key = value.get_secret_value()
        if len(key) < MIN_SECRET_LENGTH:
            raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters of random data")
        if estimated_bits(key) < MIN_SECRET_BITS:
            raise ValueError(
                f"is too predictable: its characters carry under {MIN_SECRET_BITS} bits by a "
                f"Shannon estimate; generate one with {KEY_COMMAND}"
            )
        return value

    @field_validator("mail_from")
    @classmethod
    def _mail_from_address(cls, value: str) -> str:
        _, address = parseaddr(value)
        if "@" not in address or not address.rpartition("@")[2]:
            raise ValueError('must be an address, e.g. "Chaser <no-reply@example.com>"')
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp_scheme(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if urlsplit(value).scheme not in ("smtp", "smtp+starttls", "smtps"):
            raise ValueError("must start with smtp://, smtp+starttls:// or smtps://")
        return value

    @field_validator("operator_address")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        value = value.strip()
        if value:
            split_address(value)  # raises ValueError with the reason
        return value

    @property
    def operator_host_port(self) -> tuple[str, int] | None:
        """(host, port) of the operator listener, or None when it is off."""
        return split_address(self.operator_address) if self.operator_address else None

    def limit(self, name: str) -> RateLimitItem:
        return _parse_limit(str(getattr(self, name)))


def split_address(value: str) -> tuple[str, int]:
    """`host:port` as (host, port): the host an IP address or a name, an IPv6 address in
    brackets (`[::1]:8001`); port 0 means any free port."""
    host, colon, port = value.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{value!r}: use host:port, the port a number from 0 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host or not _is_ip(host):
            raise ValueError(f"{value!r}: {host!r} in brackets is not an IPv6 address")
    elif not (_is_ip(host) and ":" not in host) and not _HOST_NAME.fullmatch(host):
        raise ValueError(
            f"{value!r}: use host:port with an IP address or a host name (IPv6 in brackets)"
        )
    return host, int(port)


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=64)
def _parse_limit(text: str) -> RateLimitItem:
    # Cached: the seed endpoint asks for its limit on every request, and parsing is not free.
    return parse(text)


class ConfigurationError(Exception):
    """A setting that cannot be run with; the CLI reports it in one line and exits 2."""


def load_secret_key(settings: Settings) -> bytes:
    """The server secret: from the setting, else from `secret_key_file`, created once (mode 600).

    The new key is written to a private temporary file and linked into place: `link` fails if
    the name exists, so processes starting at once agree on one key and none reads half a file.
    """
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    path = settings.secret_key_file
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret_key.")  # mode 600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_urlsafe(SECRET_KEY_BYTES).encode())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            Path(tmp).unlink()
    key = path.read_bytes().strip()
    if len(key) < MIN_SECRET_LENGTH:
        raise ConfigurationError(
            f"{path}: the secret key must be at least {MIN_SECRET_LENGTH} characters"
        )
    if estimated_bits(key.decode("latin-1")) < MIN_SECRET_BITS:
        raise ConfigurationError(
            f"{path}: the secret key is too predictable (under {MIN_SECRET_BITS} bits by a "
            f"Shannon estimate of its characters); generate one with {KEY_COMMAND}"
        )
    return key
