"""How a finished message leaves the building — the one seam between the worker and the world.

    MailTransport.send(message) -> None      delivered (or accepted by the relay)
        raises DeliveryError(permanent=...)   not delivered; `code` is safe to store and log
    MailTransport.close() -> None            lets go of what it holds (connections)

Two implementations: `SmtpTransport` (aiosmtplib; smtp://, smtp+starttls://, smtps://) and
`FileTransport` (one `.eml` per message, for the embedded default and development).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path
from typing import ClassVar, Protocol
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

    async def close(self) -> None: ...


class SmtpTransport:
    """Mail through a relay, with aiosmtplib.

    A connection is kept for the next message: one SMTP session carries any number of mail
    transactions (RFC 5321 §3.3), so a burst of mail pays the TCP and TLS handshakes, the
    greeting, EHLO and AUTH once per connection instead of once per message. At most `KEEP`
    connections wait; one is used again within `IDLE` seconds (a server may drop an idle
    session after five minutes, RFC 5321 §4.5.3.2.7) and for `PER_CONNECTION` messages, and
    is ended with QUIT after that, or at shutdown (`close`). A connection on which
    anything failed is dropped; one the relay had closed while it waited is replaced by a
    fresh one at once, which does not count as a failed attempt. Were the relay to close it
    just after taking a message but before answering, that message would go twice, with one
    Message-ID: delivery is at-least-once either way."""

    DEFAULT_PORTS: ClassVar[dict[str, int]] = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}
    KEEP = 16  # the worker's messages in flight at once (`worker.SENDING`)
    IDLE = 30.0
    PER_CONNECTION = 100
    QUIT_WAIT = 2.0  # seconds a QUIT may take before the connection is just closed

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
        self._waiting: list[tuple[aiosmtplib.SMTP, float, int]] = []  # client, since, messages

    def _client(self) -> aiosmtplib.SMTP:
        """A new, unconnected client; `connect` also logs in when a user is configured."""
        return aiosmtplib.SMTP(
            hostname=self.hostname,
            port=self.port,
            username=self.username,
            password=self.password,
            use_tls=self.use_tls,
            start_tls=self.start_tls,
            timeout=self.timeout,
            tls_context=ssl.create_default_context() if self.use_tls or self.start_tls else None,
        )

    async def send(self, message: EmailMessage) -> None:
        try:
            await self._send(message)
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

    async def _send(self, message: EmailMessage) -> None:
        while self._waiting:
            client, since, sent = self._waiting.pop()  # the most recently used first
            if not client.is_connected or time.monotonic() - since > self.IDLE:
                await self._quit(client)
                continue
            try:
                await client.send_message(message)
            except BaseException as exc:
                client.close()
                if _dropped(exc):
                    break  # the relay closed the session while it waited: a fresh one below
                raise
            await self._done_with(client, sent + 1)
            return
        client = self._client()
        try:
            await client.connect()
            await client.send_message(message)
        except BaseException:
            client.close()
            raise
        await self._done_with(client, 1)

    async def _done_with(self, client: aiosmtplib.SMTP, sent: int) -> None:
        if sent < self.PER_CONNECTION and len(self._waiting) < self.KEEP:
            self._waiting.append((client, time.monotonic(), sent))
        else:
            await self._quit(client)

    async def close(self) -> None:
        waiting, self._waiting = self._waiting, []
        await asyncio.gather(*(self._quit(client) for client, _, _ in waiting))

    async def _quit(self, client: aiosmtplib.SMTP) -> None:
        """End a session politely (QUIT), or just close it if the relay does not answer."""
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            if client.is_connected:
                await client.quit(timeout=self.QUIT_WAIT)
        client.close()

    async def check(self) -> None:
        """Connect and log in as `send` does, and send NOOP (`chaser-auth doctor`);
        DeliveryError with the reason when the relay cannot be used."""
        client = self._client()
        try:
            await client.connect()
            await client.noop()
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryError(f"smtp_{exc.code}", permanent=True) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryError(f"smtp_{type(exc).__name__}") from None
        finally:
            if client.is_connected:
                client.close()


def _dropped(exc: BaseException) -> bool:
    """Whether `exc` says the relay had ended the session, not that it refused the message:
    the connection went, or 421, "closing transmission channel" (RFC 5321 §3.8)."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code == 421
    return isinstance(exc, (aiosmtplib.SMTPServerDisconnected, ConnectionError))


class FileTransport:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def close(self) -> None:
        return None

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
        # Each file holds a live reset or verification link: the folder is made 0700 and the
        # file 0600 (mkstemp's mode, which `replace` keeps), whatever the umask.
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        Path(tmp).replace(target)  # atomic: a reader never sees half a message
