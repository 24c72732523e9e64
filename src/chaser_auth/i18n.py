"""Languages: which ones ship, whose language a mail or a page is in, and the translations.

The messages are English in the templates (`{% trans %}` blocks, Jinja2's i18n extension);
each other language is one gettext catalog, `locale/<locale>/LC_MESSAGES/messages.po` in this
package (docs/branding.md says how to extract, update and add one). A directory with a
catalog is a shipped language: nothing else lists them. The catalogs are compiled in memory
when first used (Babel), so there is no `.mo` file to forget to rebuild or to package.

Locales are named as gettext and Babel name them (`pt_BR`); headers and `<html lang>` carry
the BCP 47 tag (`pt-BR`, `tag`).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path

from babel import Locale, negotiate_locale
from babel.dates import format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations
from babel.units import format_unit

DEFAULT = "en"  # the language the templates are written in
LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "messages"


@functools.cache
def available() -> tuple[str, ...]:
    """The shipped locales: English, then each one with a catalog, in name order."""
    found = sorted(
        path.parent.parent.name for path in LOCALE_DIR.glob(f"*/LC_MESSAGES/{DOMAIN}.po")
    )
    return (DEFAULT, *(name for name in found if name != DEFAULT))


@functools.cache
def translations(locale: str) -> NullTranslations:
    """The gettext translations of `locale` (a shipped one; English has none to apply)."""
    path = LOCALE_DIR / locale / "LC_MESSAGES" / f"{DOMAIN}.po"
    if locale == DEFAULT or locale not in available():
        return NullTranslations()
    with path.open("rb") as po:
        catalog = read_po(po, locale=locale, domain=DOMAIN)
    compiled = io.BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return Translations(compiled, domain=DOMAIN)


def tag(locale: str) -> str:
    """The BCP 47 language tag of a locale name, for `Content-Language` and `<html lang>`."""
    return locale.replace("_", "-")


@functools.cache
def native_name(locale: str) -> str:
    """The language's name in itself (`Deutsch`, `português (Brasil)`), for the switch."""
    name = Locale.parse(locale).get_display_name(locale) or locale
    return name[:1].upper() + name[1:]


def plural_rule(locale: str) -> Callable[[int], str]:
    """The language's CLDR plural rule: a number → its category (`one`, `few`, `other` …)."""
    rule: Callable[[int], str] = Locale.parse(locale).plural_form
    return rule


@functools.cache
def direction(locale: str) -> str:
    """`ltr` or `rtl`, for `<html dir>`."""
    return "rtl" if Locale.parse(locale).text_direction == "rtl" else "ltr"


def parse_accept_language(header: str | None) -> list[str]:
    """The language ranges of an `Accept-Language` header (RFC 9110 §12.5.4), most wanted
    first; ranges with `q=0` and the wildcard are left out. Malformed parts are ignored."""
    if not header:
        return []
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")[:32]):
        name, *params = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if name and name != "*" and quality > 0 and len(name) <= 35:
            ranked.append((-quality, index, name))
    return [name for _, _, name in sorted(ranked)]


def negotiate(wanted: Iterable[str], shipped: Iterable[str] | None = None) -> str | None:
    """The first shipped locale that one of `wanted` (language tags or locale names, most
    wanted first) asks for, or None. An exact match (Babel's `negotiate_locale`, which also
    falls back from `de-AT` to `de`) wins; else a tag whose language alone is shipped in one
    region only (`pt` → `pt_BR`)."""
    offered = list(shipped if shipped is not None else available())
    spelled = {name.lower(): name for name in offered}
    for want in wanted:
        found = negotiate_locale([want.replace("-", "_")], offered, sep="_")
        if found is not None:
            return spelled.get(found.lower(), found)
        language = want.split("-", 1)[0].lower()
        regional = [name for name in offered if name.split("_", 1)[0].lower() == language]
        if regional:
            return regional[0]
    return None


def choose(wanted: Iterable[str]) -> str:
    """`negotiate`, falling back to English."""
    return negotiate(wanted) or DEFAULT


@functools.lru_cache(maxsize=512)
def _locale_for_header(accept_language: str | None) -> str:
    return choose(parse_accept_language(accept_language))


def locale_for_header(accept_language: str | None) -> str:
    """`choose` for an `Accept-Language` header. Remembered (browsers send few distinct ones,
    and the reset request's hot path asks for each request); an overlong header is cut."""
    return _locale_for_header(accept_language[:256] if accept_language else None)


def shipped_or_default(locale: str | None) -> str:
    """A stored locale as it can be served now (a language may have been removed since)."""
    return locale if locale in available() else DEFAULT


def format_when(moment: datetime, locale: str) -> str:
    """A moment as the reader's language writes it (long date, time, UTC)."""
    return format_datetime(moment, format="long", tzinfo=moment.tzinfo, locale=locale)


def format_duration(span: timedelta | int, locale: str) -> str:
    """A duration, exactly, in the largest unit that divides it (`30 minutes`, `24 hours`,
    `2 days`), plural forms and all from Babel's CLDR data."""
    seconds = int(span.total_seconds() if isinstance(span, timedelta) else span)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            return format_unit(seconds // size, f"duration-{unit}", length="long", locale=locale)
    return format_unit(seconds, "duration-second", length="long", locale=locale)
