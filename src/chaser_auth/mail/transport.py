"""How a finished message leaves the building — the one seam between the worker and the world.

    MailTransport.send(message) -> None      delivered (or accepted by the relay)
        raises DeliveryError(permanent=...)   not delivered; `code` is safe to store and log

Two implementations: `SmtpTransport` (aiosmtplib; smtp://, smtp+starttls://, smtps://) and
`FileTransport` (one `.eml` per message, for the embedded default and development).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import tempfile
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import aiosmtplib

log = logging.getLogger("chaser_auth.mail")


class DeliveryError(Exception):
    """A send that failed. `code` never holds an address or a server's free text (a 550 reply
    usually quotes the recipient), so it can go to the outbox row and the logs."""

    def __init__(self, code: str, *, permanent: bool = False) -> None:
        super().__init__(code)
        self.code = code
        self.permanent = permanent


class MailTransport(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


class SmtpTransport:
    DEFAULT_PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        self.hostname = parts.hostname or "localhost"
        self.port = parts.port or self.DEFAULT_PORTS[parts.scheme]
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.use_tls = parts.scheme == "smtps"
        # Plain smtp:// never upgrades on its own: an operator who wants TLS says so, and
        # then it is required, not opportunistic (a stripped STARTTLS must not go unnoticed).
        self.start_tls = parts.scheme == "smtp+starttls"
        self.timeout = timeout

    async def send(self, message: EmailMessage) -> None:
        try:
            await aiosmtplib.send(
                message,
                hostname=self.hostname,
                port=self.port,
                username=self.username,
                password=self.password,
                use_tls=self.use_tls,
                start_tls=self.start_tls,
                timeout=self.timeout,
                tls_context=ssl.create_default_context()
                if self.use_tls or self.start_tls
                else None,
            )
        except aiosmtplib.SMTPResponseException as exc:
            # RFC 5321 §4.2.1: 5yz is a permanent failure, 4yz transient.
            raise DeliveryError(f"smtp_{exc.code}", permanent=500 <= exc.code < 600) from None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = sorted({r.code for r in exc.recipients})
            permanent = all(500 <= c < 600 for c in codes)
            raise DeliveryError(f"smtp_refused_{codes}", permanent=permanent) from None
        except aiosmtplib.SMTPNotSupported:
            if not str(message["To"]).isascii():
                # The address needs SMTPUTF8 (RFC 6531) and the relay does not offer it: no
                # retry will change that. `outbox retry` sends it again once the relay does.
                raise DeliveryError("smtp_no_smtputf8", permanent=True) from None
            raise DeliveryError("smtp_SMTPNotSupported") from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryError(f"smtp_{type(exc).__name__}") from None

    async def check(self) -> None:
        """Connect, log in if configured, and send NOOP (`chaser-auth doctor`); DeliveryError
        with the reason when the relay cannot be used."""
        client = aiosmtplib.SMTP(
            hostname=self.hostname,
            port=self.port,
            use_tls=self.use_tls,
            start_tls=self.start_tls,
            timeout=self.timeout,
            tls_context=ssl.create_default_context() if self.use_tls or self.start_tls else None,
        )
        try:
            await client.connect()
            if self.username is not None and self.password is not None:
                await client.login(self.username, self.password)
            await client.noop()
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryError(f"smtp_{exc.code}", permanent=True) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryError(f"smtp_{type(exc).__name__}") from None
        finally:
            if client.is_connected:
                client.close()


class FileTransport:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def send(self, message: EmailMessage) -> None:
        name = str(message["Message-ID"]).strip("<>").split("@")[0]
        target = self.directory / f"{name}.eml"
        # In a thread: file I/O must not stall the event loop, and a round that writes
        # hundreds of messages would otherwise hold it for their whole time in one stretch.
        try:
            await asyncio.to_thread(self._write, message.as_bytes(), target)
        except OSError as exc:
            raise DeliveryError(f"file_{type(exc).__name__}") from None
        log.info("mail written to %s", target)

    def _write(self, data: bytes, target: Path) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        Path(tmp).replace(target)  # atomic: a reader never sees half a message
