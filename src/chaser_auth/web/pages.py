"""The pages a person opens from an email: `/forgot-password`, `/reset-password`, `/verify-email`.

Each page is server-rendered HTML (Jinja2) plus one script and one stylesheet of ours under
`/static/`. Tokens travel in the URL fragment, which a browser never sends, so a GET carries no
secret and loading a page — by a person, a mail scanner, a prefetcher — changes nothing; only
the script's POST on the person's submit uses a token.

The pages depend on nothing per request but the language, so each is rendered once per shipped
language, when the app is built (a broken override template fails at start-up, not on a
visitor). A request gets the language its `?lang=` names, else the one its `Accept-Language`
asks for (`chaser_auth.i18n`), else English; every page links to itself in each language.
An operator re-brands them by putting files in `CHASER_AUTH_TEMPLATES_DIR`: `pages/<name>.html`
replaces a template, `static/chaser-auth.css` replaces the stylesheet.
"""

from __future__ import annotations

from email.utils import parseaddr
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader, StrictUndefined
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chaser_auth import i18n
from chaser_auth.config import Settings
from chaser_auth.domain.passwords import MAX_LENGTH
from chaser_auth.domain.tokens import CODE_DIGITS
from chaser_auth.templating import CompiledTemplates

PAGES = {
    "/forgot-password": "forgot_password.html",
    "/reset-password": "reset_password.html",
    "/verify-email": "verify_email.html",
    "/change-email": "change_email.html",
    "/undo-email-change": "undo_email_change.html",
}

# No inline script or style, nothing from another origin, no framing, no form posting elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
}
# Every app of the process, in every language, renders from one compilation of each page.
_COMPILED = CompiledTemplates()


def site_name(settings: Settings) -> str:
    """The name the person saw as the email's sender (`MAIL_FROM`'s display name)."""
    return parseaddr(settings.mail_from)[0] or "chaser-auth"


def languages() -> list[dict[str, str]]:
    """The language switch: each shipped language, named in itself."""
    return [
        {
            "locale": locale,
            "tag": i18n.tag(locale),
            "name": i18n.native_name(locale),
        }
        for locale in i18n.available()
    ]


def plural_samples(locale: str) -> list[tuple[str, int]]:
    """For each plural category of the language (CLDR: `one`, `few`, …, `other`), a number in
    it: rendering a message with that number gives the category's form, which the script
    picks for a count it learns later (`Intl.PluralRules`, the same CLDR rules)."""
    rule = i18n.plural_rule(locale)
    samples: dict[str, int] = {}
    for number in [*range(200), 1000, 1_000_000]:
        samples.setdefault(rule(number), number)
    return sorted(samples.items())


def render_pages(settings: Settings) -> dict[str, dict[str, bytes]]:
    """Each page in each shipped language: locale → path → body."""
    loaders: list[Any] = [PackageLoader("chaser_auth.web", "templates")]
    if settings.templates_dir is not None:
        loaders.insert(0, FileSystemLoader(settings.templates_dir / "pages"))
    loader = ChoiceLoader(loaders)
    return {locale: _render(settings, loader, locale) for locale in i18n.available()}


def _render(settings: Settings, loader: ChoiceLoader, locale: str) -> dict[str, bytes]:
    env = Environment(
        loader=loader,
        autoescape=True,
        undefined=StrictUndefined,
        extensions=["jinja2.ext.i18n"],
        bytecode_cache=_COMPILED,
    )
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_translations(  # type: ignore[attr-defined]
        i18n.translations(locale), newstyle=True
    )
    context = {
        "site_name": site_name(settings),
        "app_url": settings.app_url,
        "min_length": settings.password_min_length,
        "max_length": MAX_LENGTH,
        "reset_ttl_minutes": settings.reset_token_ttl // 60,
        "reset_ttl": i18n.format_duration(settings.reset_token_ttl, locale),
        "code_digits": CODE_DIGITS,
        "locale": locale,
        "lang": i18n.tag(locale),
        "dir": i18n.direction(locale),
        "languages": languages(),
        "plural_samples": plural_samples(locale),
    }
    return {
        path: env.get_template(name).render(page=name.removesuffix(".html"), **context).encode()
        for path, name in PAGES.items()
    }


def page_locale(request: Request) -> str:
    """The language of a page: `?lang=` if it names a shipped one, else `Accept-Language`."""
    asked = request.query_params.get("lang")
    if asked:
        chosen = i18n.negotiate([asked[:35]])
        if chosen is not None:
            return chosen
    return i18n.locale_for_header(request.headers.get("accept-language"))


def router(settings: Settings) -> APIRouter:
    rendered = render_pages(settings)
    pages = APIRouter(include_in_schema=False)

    def add(path: str) -> None:
        bodies = {locale: by_path[path] for locale, by_path in rendered.items()}

        async def page(request: Request) -> Response:
            locale = page_locale(request)
            return Response(
                bodies[locale],
                media_type="text/html; charset=utf-8",
                headers={
                    **PAGE_HEADERS,
                    "Content-Language": i18n.tag(locale),
                    "Vary": "Accept-Language",
                },
            )

        pages.add_api_route(path, page, methods=["GET", "HEAD"], name=path.strip("/"))

    for path in PAGES:
        add(path)
    return pages


class _WithHeaders:
    """Adds the page headers to every static response (a script is a document's part too)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.extra = [(k.lower().encode(), v.encode()) for k, v in PAGE_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def static_files(settings: Settings) -> ASGIApp:
    override: Path | None = None
    if settings.templates_dir is not None and (settings.templates_dir / "static").is_dir():
        override = settings.templates_dir / "static"
    return _WithHeaders(
        StaticFiles(
            directory=override, packages=[("chaser_auth.web", "static")], follow_symlink=False
        )
    )
