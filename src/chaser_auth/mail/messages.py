"""Rendering: a template name and a context in, a complete RFC 5322 message out.

Templates are Jinja2 (`<name>.subject.txt`, `<name>.txt`, `<name>.html` under mail/templates/),
their words in `{% trans %}` blocks (the i18n extension) that the reader's language's catalog
translates (`chaser_auth.i18n`); every message says its language in `Content-Language`
(RFC 3282). Two filters write values as that language does: `when` (a datetime) and
`duration` (a timedelta or seconds).
An operator overrides any of them by putting a file of the same name in
`CHASER_AUTH_TEMPLATES_DIR` (read once per process: restart after editing one); the HTML part
is autoescaped.

A stored address whose local part is not ASCII (an account may have one: `addresses`) is
written in UTF-8 in the To header (RFC 6532), which the transport then sends with SMTPUTF8
(RFC 6531); every other message stays in plain ASCII, with encoded words where a header needs
them.
"""

from __future__ import annotations

import email.policy
import uuid
from datetime import datetime
from email.headerregistry import Address, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Any

from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    select_autoescape,
)

from chaser_auth import i18n
from chaser_auth.templating import CompiledTemplates


class _HeaderClasses(HeaderRegistry):
    """The standard library's header registry, with each header name's class made once.

    `HeaderRegistry` builds a new class every time a header is set or parsed — about sixteen
    per message here. That was half of building a message, and each new class flushes the
    interpreter's method caches, which slows the rest of the process as well. The classes are
    stateless, so one per name serves every message."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        made = self._made.get(name.lower())
        if made is None:
            made = self._made[name.lower()] = super().__getitem__(name)
        return made


_POLICY = email.policy.default.clone(header_factory=_HeaderClasses())
_UTF8_POLICY = _POLICY.clone(utf8=True)  # RFC 6532 headers, for a non-ASCII local part
# Every renderer of the process, in every language, uses one compilation of each template.
_COMPILED = CompiledTemplates()


class Renderer:
    def __init__(self, mail_from: str, override_dir: Path | None = None) -> None:
        loaders: list[Any] = [PackageLoader("chaser_auth.mail", "templates")]
        if override_dir is not None:
            loaders.insert(0, FileSystemLoader(override_dir))
        self._loader = ChoiceLoader(loaders)
        self._envs: dict[str, Environment] = {}
        self.mail_from = mail_from
        domain = parseaddr(mail_from)[1].rpartition("@")[2]
        self._id_domain = domain or "localhost"

    def message_id(self, job_id: uuid.UUID) -> str:
        """Stable per outbox row, so a retried send carries the same Message-ID (RFC 5322 §3.6.4)
        and a receiving system can drop the duplicate."""
        return f"<{job_id.hex}@{self._id_domain}>"

    def _env(self, locale: str) -> Environment:
        """One environment per language, its translations installed (made on first use)."""
        env = self._envs.get(locale)
        if env is None:
            env = self._envs[locale] = Environment(
                loader=self._loader,
                autoescape=select_autoescape(["html"], default_for_string=False),
                undefined=StrictUndefined,
                keep_trailing_newline=True,
                # Each template is read once per process: Jinja2 would otherwise stat its file
                # (through both loaders) on every use, eight system calls per message.
                auto_reload=False,
                extensions=["jinja2.ext.i18n"],
                bytecode_cache=_COMPILED,
            )
            env.policies["ext.i18n.trimmed"] = True  # a paragraph is one message, one line
            env.install_gettext_translations(  # type: ignore[attr-defined]
                i18n.translations(locale), newstyle=True
            )
            env.filters["when"] = lambda moment: i18n.format_when(moment, locale)
            env.filters["duration"] = lambda span: i18n.format_duration(span, locale)
        return env

    def render(
        self,
        template: str,
        *,
        to: str,
        job_id: uuid.UUID,
        date: datetime,
        context: dict[str, Any],
        locale: str = i18n.DEFAULT,
    ) -> EmailMessage:
        """The message, in `locale` (a shipped one; anything else is written in English)."""
        locale = i18n.shipped_or_default(locale)
        env = self._env(locale)
        context = {**context, "lang": i18n.tag(locale), "dir": i18n.direction(locale)}
        subject = env.get_template(f"{template}.subject.txt").render(context).strip()
        text = env.get_template(f"{template}.txt").render(context)
        html = env.get_template(f"{template}.html").render(context)
        local, _, domain = to.rpartition("@")
        message = EmailMessage(policy=_POLICY if local.isascii() else _UTF8_POLICY)
        message["From"] = self.mail_from
        # From its parts, not parsed: the local part is quoted where it needs it ("a,b"), so
        # it can never read as two addresses or a display name.
        message["To"] = Address(username=local, domain=domain)
        message["Subject"] = subject
        message["Date"] = format_datetime(date)
        message["Message-ID"] = self.message_id(job_id)
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation auto-replies
        message.set_content(text, cte=_transfer_encoding(text))
        message.add_alternative(html, subtype="html", cte=_transfer_encoding(html))
        # After the parts: setting content moves or clears the Content-* headers.
        message["Content-Language"] = i18n.tag(locale)  # RFC 3282
        return message


def _transfer_encoding(body: str) -> str:
    # Plain 7bit keeps the link on one line: quoted-printable would fold it with "=" soft
    # breaks, which breaks copy-and-paste from raw `.eml` files and naive mail readers.
    return "7bit" if body.isascii() else "quoted-printable"
