"""Settings: read once from the environment (and `.env`), then passed in — never a module global.

Every field maps to `CHASER_AUTH_<FIELD>`, and its `description` is what docs/configuration.md
says about it: `python -m chaser_auth.config_reference` writes that page from this class.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import ipaddress
import json
import math
import os
import re
import secrets
import tempfile
from collections import Counter
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from limits import RateLimitItem, parse
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from chaser_auth.domain.webhooks import EVENT_TYPES

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

    host: str = Field(
        default="127.0.0.1",
        description="the address `chaser-auth serve` binds when no `--host` is given "
        "(`0.0.0.0` for every IPv4 interface, e.g. in a container)",
    )
    port: Annotated[
        int,
        Field(
            ge=1,
            le=65535,
            description="the port `chaser-auth serve` binds when no `--port` is given",
        ),
    ] = 8000
    database_url: str = Field(
        default="sqlite+aiosqlite:///./var/chaser-auth.db",
        description="SQLite (embedded; a new file is created mode 600, its folder 700) or "
        "`postgresql+asyncpg://…`",
    )
    redis_url: str | None = Field(
        default=None,
        description="shared rate limits through Redis; unset = the per-address mail limit in "
        "the database, the others in process memory (see [Deployment](deployment.md))",
    )
    redis_key_prefix: str = Field(
        default="chaser-auth",
        description="prefix of every Redis key, for deployments that share one Redis",
    )
    smtp_url: str | None = Field(
        default=None,
        description="`smtp://[user:pass@]host:port`, `smtp+starttls://…`, `smtps://…`; unset = "
        "each message becomes a file in `CHASER_AUTH_MAIL_DIR`. A worker keeps up to 16 "
        "connections open for its next messages (reused within 30 s, 100 messages each), so a "
        "burst of mail does not pay a TCP and TLS handshake per message",
    )
    smtp_timeout: Annotated[
        float,
        Field(
            gt=0,
            description="seconds the relay has for each step of a conversation (connecting, "
            "each command)",
        ),
    ] = 10.0
    mail_from: str = Field(
        default="Chaser <no-reply@localhost>",
        description="From header; its display name is the brand name the pages show",
    )
    mail_dir: Path = Field(
        default=Path("./var/mail"),
        description="where `.eml` files go when no SMTP URL is set (created mode 700, each "
        "file 600)",
    )
    templates_dir: Path | None = Field(
        default=None,
        description="a folder whose files override the email templates of the same name, and "
        "the pages' templates (`pages/`) and stylesheet (`static/chaser-auth.css`) — see "
        "[Branding](branding.md)",
    )
    public_url: str = Field(
        default="http://localhost:8000",
        description="base of every link in every email; never taken from a request",
    )
    operator_address: str = Field(
        default="127.0.0.1:8001",
        description="`host:port` (IPv6 in brackets) of the operator listener: `/metrics`, "
        "`/healthz`, `/readyz` ([the operator listener](deployment.md#the-operator-listener)); "
        "empty = off; port 0 = any free port (one process only)",
    )
    admin_keys: str = Field(
        default="",
        description="the keys of the admin API on the operator listener, as comma-separated "
        "`name:digest` pairs: the digest is the SHA-256 (64 hex digits) of a key a caller "
        "presents as `Authorization: Bearer <key>`, the name is what the audit trail records "
        "for its calls. `chaser-auth admin-key NAME` makes a key and prints its pair. Several "
        "keys may be live at once, so one can be replaced without a gap; empty = every admin "
        "call is refused (see [Admin API](operations.md#the-admin-api))",
    )
    webhooks: SecretStr | None = Field(
        default=None,
        description="the webhook endpoints, as a JSON list of objects: `url` (http or https), "
        "`secret` (a Standard Webhooks secret, `whsec_` and 24 to 64 random bytes in base64), "
        '`events` (the event types it wants; absent or `["*"]` = all) and `name` (1-32 '
        "letters, digits or `_.-`; absent = derived from the URL — name it to keep its queued "
        "events when its URL changes). Every process must have the same list. Held as a secret: "
        "never logged or shown; unset = no webhooks (see [Webhooks](integration.md#webhooks))",
    )
    webhook_timeout: Annotated[
        float,
        Field(
            gt=0,
            description="seconds an endpoint has to answer a webhook; no answer in time is a "
            "failed attempt, retried",
        ),
    ] = 10.0
    webhook_max_attempts: Annotated[
        int,
        Field(
            ge=1,
            description="delivery attempts of a webhook before it becomes a dead letter (the "
            "backoff is the mail's: `CHASER_AUTH_MAIL_RETRY_BASE`, `CHASER_AUTH_MAIL_RETRY_MAX`; "
            "the default gives up after 3 to 6 hours)",
        ),
    ] = 16
    app_url: str | None = Field(
        default=None,
        description='where the pages send a person after success (a "Continue" link); '
        "without it the page says to sign in",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="the server secret (HMAC key for tokens); unset = read from "
        "`CHASER_AUTH_SECRET_KEY_FILE`. At least 32 characters whose Shannon estimate (length "
        "× the entropy of the key's own character frequencies) reaches 128 bits, else the "
        "process refuses to start; the estimate catches keys of one or a few characters "
        "repeated (`aaaa…`, `abab…`), not patterns such as `0123…`. Generate one with "
        "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'` (about 210 bits "
        "estimated) or `openssl rand -hex 32`; 32 hex characters (`openssl rand -hex 16`) "
        "cannot reach the estimate",
    )
    secret_key_file: Path = Field(
        default=Path("./var/secret_key"),
        description="generated once, mode 600, when no key is set; a key put there by hand "
        "must pass the same checks",
    )

    reset_token_ttl: Annotated[int, Field(gt=0, description="seconds a reset link stays valid")] = (
        1800
    )
    invitation_ttl: Annotated[
        int,
        Field(
            gt=0,
            description="seconds the set-password link of an invitation (an account an "
            "operator created without a password) stays valid",
        ),
    ] = 604800
    verify_token_ttl: Annotated[
        int,
        Field(
            gt=0,
            description="seconds an email-verification link stays valid; an account whose "
            "newest sign-up's link expired unconfirmed is deleted by the worker's hourly chores",
        ),
    ] = 86400
    email_change_ttl: Annotated[
        int,
        Field(
            gt=0,
            description="seconds the link confirming a new address stays valid, and the undo "
            "link sent to the old address after the change",
        ),
    ] = 86400
    session_idle_ttl: Annotated[
        int, Field(gt=0, description="seconds a session lives without being used")
    ] = 604800
    session_max_ttl: Annotated[
        int, Field(gt=0, description="seconds a session lives at most, used or not")
    ] = 2592000

    rate_limit_reset_per_ip: str = Field(
        default="10/minute", description="reset requests per client address"
    )
    rate_limit_reset_per_address: str = Field(
        default="3/hour",
        description="emails sent to one address by reset requests and sign-ups together; "
        "beyond it, an account with no working reset link still gets one (at most one per "
        "`CHASER_AUTH_RESET_TOKEN_TTL`, see "
        "[Security decisions](security.md#security-decisions))",
    )
    rate_limit_login: str = Field(
        default="10/minute",
        description="failed logins per account and client address (wrong current passwords "
        "on `password/change` count the same way)",
    )
    rate_limit_login_per_ip: str = Field(
        default="30/minute",
        description="login attempts per client address, whatever the account (each costs an "
        "argon2 verification)",
    )
    rate_limit_login_per_account: str = Field(
        default="100/hour",
        description="login attempts at one address (as typed, normalised — known or not) from "
        "all clients together, counted until one succeeds; a successful password reset starts "
        "it afresh (NIST SP 800-63B: at most 100 consecutive failures)",
    )
    rate_limit_token_per_ip: str = Field(
        default="30/minute",
        description="tries per client address at the endpoints that take a link's token or "
        "a one-time code (`password-reset/confirm`, `password-reset/verify`, "
        "`password-reset/code`, `verify-email`, `verify-email/code`), counted together",
    )
    rate_limit_code_per_address: str = Field(
        default="10/hour",
        description="tries at the one-time codes of one address (as typed, normalised — known "
        "or not), `password-reset/code` and `verify-email/code` together, from all clients; "
        "each try also counts against `CHASER_AUTH_RATE_LIMIT_TOKEN_PER_IP`. With "
        "`CHASER_AUTH_CODE_TRIES` it bounds an attacker's odds: see "
        "[One-time codes](security.md#one-time-codes)",
    )
    code_tries: Annotated[
        int,
        Field(
            ge=1,
            le=20,
            description="tries a one-time code answers before it dies (its link keeps "
            "working); the right code counts as a try too",
        ),
    ] = 5
    rate_limit_register_per_ip: str = Field(
        default="20/hour", description="sign-ups per client address (each one hashes a password)"
    )
    rate_limit_resend_per_ip: str = Field(
        default="10/hour",
        description="`verify-email/resend` requests per client address",
    )
    rate_limit_resend_per_address: str = Field(
        default="5/hour",
        description="`verify-email/resend` requests per address (as typed, normalised — "
        "known or not); the mail itself also counts against "
        "`CHASER_AUTH_RATE_LIMIT_RESET_PER_ADDRESS`",
    )
    trusted_proxies: str | None = Field(
        default=None,
        description="comma-separated addresses/networks whose `X-Forwarded-For` is believed",
    )
    cors_origins: str = Field(
        default="",
        description="comma-separated origins (`https://app.example.com`, scheme, host and "
        "port only) whose pages may call the API from the browser, with credentials: CORS "
        "answers them, and a cookie session accepts their state-changing requests (see "
        "[Browser apps](browser-apps.md)); empty = none, the pages and the API stay "
        "same-origin",
    )

    password_min_length: Annotated[
        int,
        Field(
            ge=8,
            le=128,
            description="NIST SP 800-63B Rev 4 minimum for a single-factor password",
        ),
    ] = 15
    notify_new_sign_in: bool = Field(
        default=False,
        description='email the account a "new sign-in" notice after every successful login, '
        "naming the browser and the network it came from",
    )
    notify_unknown: bool = Field(
        default=False,
        description="tell an address with no account that someone asked (same per-address limit)",
    )

    mail_max_attempts: Annotated[
        int,
        Field(ge=1, description="delivery attempts before a message becomes a dead letter"),
    ] = 8
    mail_retry_base: Annotated[
        float,
        Field(
            gt=0,
            description="backoff in seconds: base × 2^(attempt-1), capped at "
            "`CHASER_AUTH_MAIL_RETRY_MAX`, with equal jitter",
        ),
    ] = 5.0
    mail_retry_max: Annotated[
        float, Field(gt=0, description="the longest backoff between two attempts, seconds")
    ] = 3600.0
    mail_rate: str | None = Field(
        default=None,
        description="cap on messages sent per period by all workers (e.g. `600/minute`); "
        "excess waits",
    )
    worker_poll_interval: Annotated[
        float,
        Field(
            gt=0,
            description="seconds a worker sleeps when idle at most; it is woken at once by "
            "requests in its own process and, on PostgreSQL, by `NOTIFY` from any process",
        ),
    ] = 1.0
    worker_lease: Annotated[
        int,
        Field(
            gt=0,
            description="seconds a claimed message stays with one worker before another may "
            "take it over; the worker renews it every quarter of it while the message is "
            "still with the relay",
        ),
    ] = 120
    embedded_worker: bool = Field(
        default=True, description="run the worker inside `serve` (`--no-worker` sets it to false)"
    )

    # argon2id cost (RFC 9106 "second recommended option" by default: t=3, m=64 MiB, p=4).
    argon2_time_cost: Annotated[
        int,
        Field(
            ge=1,
            description="argon2id passes over memory (RFC 9106); raised costs upgrade hashes "
            "at the next login",
        ),
    ] = 3
    argon2_memory_cost: Annotated[
        int, Field(ge=8, description="argon2id memory in KiB (65536 = 64 MiB)")
    ] = 65536
    argon2_parallelism: Annotated[int, Field(ge=1, description="argon2id lanes")] = 4

    log_level: str = Field(
        default="INFO", description="log level: `DEBUG`, `INFO`, `WARNING`, `ERROR` or `CRITICAL`"
    )
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="`serve` and `worker` write one JSON object per line to stdout (`time`, "
        "`level`, `logger`, `message`, `request_id`, and fields such as `method`, `path`, "
        "`status`, `duration_ms`); `text` for plain lines. Other commands log text to stderr",
    )
    audit_retention_days: Annotated[
        int,
        Field(
            ge=1,
            description="audit events older than this are deleted (hourly by workers, or "
            "`chaser-auth audit purge`)",
        ),
    ] = 90
    outbox_retention_hours: Annotated[
        int,
        Field(
            ge=1,
            description="finished outbox rows (mail sent, or a request that needed none) "
            "older than this are deleted, hourly by workers; dead letters stay until "
            "`outbox retry` or `outbox purge`",
        ),
    ] = 168
    unmatched_retention_hours: Annotated[
        int,
        Field(
            ge=1,
            description="audit events and finished outbox rows that name no account — a reset "
            "request for an address with no account, a confirm with an unknown token — are "
            "deleted after this instead (see "
            "[What a flood leaves behind](operations.md#what-a-flood-leaves-behind))",
        ),
    ] = 24

    @field_validator(
        "rate_limit_reset_per_ip",
        "rate_limit_reset_per_address",
        "rate_limit_login",
        "rate_limit_login_per_ip",
        "rate_limit_login_per_account",
        "rate_limit_token_per_ip",
        "rate_limit_code_per_address",
        "rate_limit_register_per_ip",
        "rate_limit_resend_per_ip",
        "rate_limit_resend_per_address",
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

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip():
                origin(part.strip())  # raises ValueError with the reason
        return value

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        """The allowlisted origins, each as `origin` spells it, in the order given."""
        return tuple(origin(part.strip()) for part in self.cors_origins.split(",") if part.strip())

    @property
    def public_origin(self) -> str:
        """The origin of `public_url`: where the pages are, and the API's own origin."""
        return origin(self.public_url, path_allowed=True)

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

    @field_validator("webhooks")
    @classmethod
    def _webhook_list(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        webhook_endpoints(value.get_secret_value())  # raises ValueError with the reason
        return value

    @property
    def webhook_endpoints(self) -> list[WebhookEndpoint]:
        """The webhook endpoints configured, in order."""
        return webhook_endpoints(self.webhooks.get_secret_value()) if self.webhooks else []

    @field_validator("admin_keys")
    @classmethod
    def _admin_key_pairs(cls, value: str) -> str:
        admin_key_digests(value)  # raises ValueError with the reason
        return value.strip()

    @property
    def admin_key_digests(self) -> dict[str, str]:
        """The admin keys' digests (hex), by name."""
        return admin_key_digests(self.admin_keys)

    @property
    def operator_host_port(self) -> tuple[str, int] | None:
        """(host, port) of the operator listener, or None when it is off."""
        return split_address(self.operator_address) if self.operator_address else None

    def limit(self, name: str) -> RateLimitItem:
        return _parse_limit(str(getattr(self, name)))


@dataclass(frozen=True)
class WebhookEndpoint:
    name: str
    url: str
    secret: str
    events: frozenset[str]

    def __repr__(self) -> str:  # never the secret
        return f"WebhookEndpoint(name={self.name!r}, events={sorted(self.events)!r})"


_ENDPOINT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix, not a secret


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def webhook_endpoints(value: str) -> list[WebhookEndpoint]:
    """CHASER_AUTH_WEBHOOKS as endpoints; ValueError naming what is wrong — by the entry's
    number and name, never echoing a secret."""
    try:
        entries = json.loads(value)
    except json.JSONDecodeError:
        raise ValueError("must be a JSON list of endpoint objects") from None
    if not isinstance(entries, list):
        raise ValueError("must be a JSON list of endpoint objects")
    found: list[WebhookEndpoint] = []
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise ValueError(f"entry {number}: must be an object with url and secret")
        unknown = sorted(set(entry) - {"url", "secret", "events", "name"})
        if unknown:
            raise ValueError(f"entry {number}: unknown field(s) {', '.join(unknown)}")
        url = entry.get("url")
        if not isinstance(url, str) or not _http_url(url):
            raise ValueError(f"entry {number}: url must be an absolute http(s) URL")
        name = entry.get("name")
        if name is None:
            name = "ep-" + hashlib.sha256(url.encode()).hexdigest()[:12]
        if not isinstance(name, str) or not _ENDPOINT_NAME.fullmatch(name):
            raise ValueError(f"entry {number}: name must be 1-32 letters, digits or _.-")
        secret = entry.get("secret")
        if not isinstance(secret, str) or not _good_secret(secret):
            raise ValueError(
                f"entry {number} ({name}): secret must be whsec_ and 24 to 64 bytes in base64 "
                '(make one with python3 -c "import base64, secrets; '
                "print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\")"
            )
        events = entry.get("events", ["*"])
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            raise ValueError(f"entry {number} ({name}): events must be a list of event types")
        wrong = sorted(set(events) - {*EVENT_TYPES, "*"})
        if wrong:
            raise ValueError(
                f"entry {number} ({name}): unknown event type(s) {', '.join(wrong)}; known: "
                f"{', '.join(EVENT_TYPES)}"
            )
        if any(e.name == name for e in found):
            raise ValueError(f"entry {number}: the name {name} is used twice")
        wanted = frozenset(EVENT_TYPES) if "*" in events else frozenset(events)
        found.append(WebhookEndpoint(name, url, secret, wanted))
    return found


def _http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def _good_secret(secret: str) -> bool:
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        return False
    try:
        key = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        return False
    return 24 <= len(key) <= 64


_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,39}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def admin_key_digests(value: str) -> dict[str, str]:
    """`name:digest,name:digest` as {name: digest}; ValueError naming what is wrong (never
    echoing a value that may be a key pasted in by mistake)."""
    pairs: dict[str, str] = {}
    for number, part in enumerate((p.strip() for p in value.split(",") if p.strip()), 1):
        name, colon, digest = part.partition(":")
        name, digest = name.strip(), digest.strip().lower()
        if not colon or not _KEY_NAME.fullmatch(name):
            raise ValueError(
                f"entry {number}: use name:digest, the name 1-40 letters, digits or _.@- "
                "(make a pair with `chaser-auth admin-key NAME`)"
            )
        if not _DIGEST.fullmatch(digest):
            raise ValueError(
                f"entry {number} ({name}): the digest must be the key's SHA-256 in 64 hex "
                "digits, not the key itself (make a pair with `chaser-auth admin-key NAME`)"
            )
        if name in pairs:
            raise ValueError(f"entry {number}: the name {name} is used twice")
        pairs[name] = digest
    return pairs


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(value: str, *, path_allowed: bool = False) -> str:
    """An origin as browsers send it in `Origin`: `scheme://host[:port]`, lower case, the
    default port left out; ValueError for anything else (a path, a query, user info)."""
    parts = urlsplit(value.strip())
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{value!r}: an origin is http(s)://host[:port]")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"{value!r}: an origin is http(s)://host[:port], nothing more")
    if not path_allowed and parts.path not in ("", "/"):
        raise ValueError(f"{value!r}: an origin has no path")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{value!r}: the port is not a number from 0 to 65535") from None
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


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
    # Cached: the reset request asks for its limit on every request, and parsing is not free.
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
