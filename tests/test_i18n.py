"""Languages (docs/branding.md, "Languages"): the catalogs against the templates, language
negotiation, and every template rendered in every shipped language.

The messages the templates use are extracted here the way `scripts/translations` extracts them
(Babel, with the mapping in babel.cfg), so a catalog that lacks one — a template changed and
the catalogs not updated — fails this module, as does a fuzzy or empty entry, or a translation
whose placeholders or markup differ from the English."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from babel.messages.catalog import Catalog, Message
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from chaser_auth import i18n
from chaser_auth.mail.messages import Renderer
from chaser_auth.web.pages import PAGES, render_pages
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("en", "de", "fr", "es", "pt_BR", "ja", "ar")
TEMPLATES = (
    "password_reset",
    "verify_email",
    "account_exists",
    "password_changed",
    "reset_unknown",
    "invitation",
    "new_sign_in",
    "email_change",
    "email_changed",
)
PLACEHOLDER = re.compile(r"%\([a-z_]+\)s|\{[a-z_]+\}")
TAG = re.compile(r"</?[a-z]+[^>]*>")


def template_messages() -> dict[str | tuple[str, str], set[str]]:
    """msgid → the templates that use it, extracted as `scripts/translations` does."""
    with (ROOT / "babel.cfg").open(encoding="utf-8") as config:
        method_map, options_map = parse_mapping_cfg(config)
    found: dict[str | tuple[str, str], set[str]] = {}
    for filename, _, message, _, _ in extract_from_dir(
        str(ROOT), method_map, options_map, keywords={"gettext": None, "ngettext": (1, 2)}
    ):
        key = message if isinstance(message, str) else (message[0], message[1])
        found.setdefault(key, set()).add(filename)
    return found


MESSAGES = template_messages()


def catalog(locale: str) -> Catalog:
    path = i18n.LOCALE_DIR / locale / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as po:
        return read_po(po, locale=locale)


def test_the_shipped_languages_are_the_catalogs_on_disk() -> None:
    assert set(i18n.available()) == set(SHIPPED)
    assert i18n.available()[0] == "en"


def test_the_templates_have_messages_to_translate() -> None:
    assert len(MESSAGES) > 50
    users = {Path(name).name for names in MESSAGES.values() for name in names}
    for name in TEMPLATES:
        assert {f"{name}.subject.txt", f"{name}.txt", f"{name}.html"} <= users
    assert {Path(page).name for page in PAGES.values()} <= users


@pytest.mark.parametrize("locale", [name for name in SHIPPED if name != "en"])
def test_each_catalog_translates_every_message_the_templates_use(locale: str) -> None:
    entries = {message.id: message for message in catalog(locale) if message.id}
    missing = [key for key in MESSAGES if key not in entries]
    assert not missing, f"{locale} lacks {len(missing)} message(s), e.g. {missing[:3]}"
    unused = [key for key in entries if key not in MESSAGES]
    assert not unused, f"{locale} has messages no template uses: {unused[:3]}"
    for key, message in entries.items():
        assert not message.fuzzy, f"{locale}: fuzzy entry {key!r}"
        forms = tuple(message.string) if isinstance(message.string, tuple) else (message.string,)
        assert all(isinstance(form, str) for form in forms), f"{locale}: no text for {key!r}"
        texts = tuple(str(form) for form in forms)
        assert all(text.strip() for text in texts), f"{locale}: untranslated {key!r}"
        check_same_markup(locale, message, texts)


def check_same_markup(locale: str, message: Message, forms: tuple[str, ...]) -> None:
    english = message.id if isinstance(message.id, str) else message.id[1]
    for form in forms:
        # The same placeholders (count and name) and the same HTML tags, attributes and all.
        assert sorted(PLACEHOLDER.findall(form)) == sorted(PLACEHOLDER.findall(english)), (
            f"{locale}: placeholders differ in {form!r}"
        )
        assert sorted(TAG.findall(form)) == sorted(TAG.findall(english)), (
            f"{locale}: markup differs in {form!r}"
        )


@pytest.mark.parametrize("locale", [name for name in SHIPPED if name != "en"])
def test_each_catalog_has_the_plural_forms_of_its_language(locale: str) -> None:
    parsed = catalog(locale)
    plurals = [message for message in parsed if isinstance(message.id, tuple)]
    assert plurals, "the templates use plural forms: the catalog must have them"
    for message in plurals:
        assert isinstance(message.string, tuple)
        assert len(message.string) == parsed.num_plurals, message.id
    assert not list(parsed.check()), f"{locale}: Babel's catalog checks failed"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "en"),
        ("", "en"),
        ("de", "de"),
        ("de-AT,de;q=0.9,en;q=0.8", "de"),
        ("fr-CH, fr;q=0.9, en;q=0.8, de;q=0.7, *;q=0.5", "fr"),
        ("pt-BR", "pt_BR"),
        ("pt", "pt_BR"),  # one Portuguese is shipped: it answers for the language
        ("pt-PT,en;q=0.5", "pt_BR"),
        ("en-US,en;q=0.9,ja;q=0.8", "en"),
        ("ja;q=0.4, ar;q=0.9", "ar"),
        ("zh-CN, de;q=0", "en"),  # q=0 means "not this one"
        ("zh-CN, es;q=0.1", "es"),
        ("*", "en"),
        ("garbage;;;q=x, , ;", "en"),
    ],
)
def test_accept_language_is_negotiated_against_the_shipped_languages(
    header: str | None, expected: str
) -> None:
    assert i18n.locale_for_header(header) == expected


def test_tags_directions_and_names() -> None:
    assert i18n.tag("pt_BR") == "pt-BR"
    assert [i18n.direction(locale) for locale in SHIPPED] == ["ltr"] * 6 + ["rtl"]
    assert i18n.native_name("de") == "Deutsch"
    assert i18n.native_name("ja") == "日本語"


@pytest.mark.parametrize(
    ("seconds", "locale", "expected"),
    [
        (1800, "en", "30 minutes"),
        (60, "en", "1 minute"),
        (5400, "en", "90 minutes"),  # exact: never rounded up to "2 hours"
        (1800, "de", "30 Minuten"),
        (3600 * 24, "fr", "1\u00a0jour"),  # a no-break space, as French writes it
        (7200, "ja", "2 時間"),
        (3600, "ar", "ساعة"),
    ],
)
def test_durations_are_exact_and_in_the_readers_language(
    seconds: int, locale: str, expected: str
) -> None:
    assert i18n.format_duration(timedelta(seconds=seconds), locale) == expected


CONTEXTS: dict[str, dict[str, Any]] = {
    "password_reset": {
        "link": "https://auth.example/reset-password#token=" + "a" * 43,
        "code": "1234 5678",
        "ttl_minutes": 30,
        "ttl": timedelta(minutes=30),
    },
    "verify_email": {
        "link": "https://auth.example/verify-email#token=" + "a" * 43,
        "code": "1234 5678",
        "ttl_hours": 24,
        "ttl": timedelta(hours=24),
    },
    "account_exists": {"forgot_link": "https://auth.example/forgot-password"},
    "password_changed": {
        "changed_at": "2026-12-07 09:30 UTC",
        "changed": datetime(2026, 12, 7, 9, 30, tzinfo=UTC),
        "forgot_link": "https://auth.example/forgot-password",
        "device": "Firefox 128 on Windows 10",
        "place": "203.0.113.0/24",
    },
    "reset_unknown": {"public_url": "https://auth.example"},
    "invitation": {
        "link": "https://auth.example/reset-password#token=" + "a" * 43,
        "ttl_days": 7,
        "ttl_hours": 168,
        "ttl": timedelta(days=7),
    },
    "new_sign_in": {
        "signed_in_at": "2026-12-07 09:30 UTC",
        "signed_in": datetime(2026, 12, 7, 9, 30, tzinfo=UTC),
        "forgot_link": "https://auth.example/forgot-password",
        "device": "Firefox 128 on Windows 10",
        "place": "203.0.113.0/24",
    },
    "email_change": {
        "link": "https://auth.example/change-email#token=" + "a" * 43,
        "ttl_hours": 24,
        "ttl": timedelta(hours=24),
    },
    "email_changed": {
        "new_email": "new@example.org",
        "undo_link": "https://auth.example/undo-email-change#token=" + "a" * 43,
        "forgot_link": "https://auth.example/forgot-password",
        "ttl_hours": 24,
        "ttl": timedelta(hours=24),
    },
}
# The values a mail shows as they are, in every language.
VALUES = ("link", "code", "forgot_link", "public_url", "undo_link", "new_email", "device", "place")


def mail(renderer: Renderer, name: str, locale: str, **context: Any) -> tuple[str, str, str]:
    """A mail's subject, text and HTML, in `locale`."""
    message = renderer.render(
        name,
        to="reader@example.com",
        job_id=uuid.uuid4(),
        date=datetime(2026, 12, 7, tzinfo=UTC),
        context={**CONTEXTS[name], **context},
        locale=locale,
    )
    assert message["Content-Language"] == i18n.tag(locale)
    html = str(message.get_body(("html",)).get_content())  # type: ignore[union-attr]
    text = str(message.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    return str(message["Subject"]), text, html


def sentences(text: str, values: dict[str, Any]) -> set[str]:
    """A text's lines, less those that are one of the values the mail shows."""
    shown = {str(value) for value in values.values()}
    return {
        line.strip() for line in text.splitlines() if line.strip() and line.strip() not in shown
    }


def test_every_mail_template_has_a_context_here() -> None:
    assert set(CONTEXTS) == set(TEMPLATES)
    shipped = {
        path.name.split(".")[0] for path in (ROOT / "src/chaser_auth/mail/templates").iterdir()
    }
    assert shipped - {"_layout"} == set(TEMPLATES)


@pytest.mark.parametrize("locale", SHIPPED)
def test_every_mail_renders_in_every_language(locale: str) -> None:
    renderer = Renderer("Example <no-reply@auth.example>")
    for name, context in CONTEXTS.items():
        subject, text, html = mail(renderer, name, locale)
        assert f'<html lang="{i18n.tag(locale)}" dir="{i18n.direction(locale)}">' in html
        for value in VALUES:
            if value in context:
                assert str(context[value]) in text, (name, value)
                assert str(context[value]) in html, (name, value)
        if locale != "en":
            # Translated, every line: not the English text with another header.
            english_subject, english, _ = mail(renderer, name, "en")
            assert subject != english_subject, name
            left = sentences(english, context) & sentences(text, context)
            assert not left, (name, left)


@pytest.mark.parametrize("name", ["password_changed", "new_sign_in"])
def test_a_notice_without_the_browser_or_network_leaves_their_lines_out(name: str) -> None:
    renderer = Renderer("Example <no-reply@auth.example>")
    _, text, html = mail(renderer, name, "en", device="", place="")
    assert "Browser or app" not in text and "Network" not in text
    assert "Browser or app" not in html and "Network" not in html
    assert "\n\n\n" not in text  # no blank line left twice
    _, text, _ = mail(renderer, name, "de", place="")
    assert "Browser oder App: Firefox 128 on Windows 10" in text and "Netzwerk" not in text


def test_a_mail_says_its_duration_and_date_as_its_language_does() -> None:
    renderer = Renderer("Example <no-reply@auth.example>")

    def text(name: str, locale: str, **context: Any) -> str:
        return mail(renderer, name, locale, **context)[1]

    assert "30 Minuten" in text("password_reset", "de")
    assert "1\u00a0jour" in text("verify_email", "fr")
    assert "7. Dezember 2026" in text("password_changed", "de")
    assert "2026年12月7日" in text("password_changed", "ja")
    assert "7. Dezember 2026" in text("new_sign_in", "de")
    assert "7 días" in text("invitation", "es")
    # German says a lifetime in the accusative ("7 Tage lang"): "in 7 Tage" would be wrong.
    assert "7 Tage lang gültig" in text("invitation", "de")
    assert "2 Tage lang gültig" in text("verify_email", "de", ttl=timedelta(days=2))
    assert "1\u00a0jour" in text("email_change", "fr")
    assert "خلال يوم" in text("email_changed", "ar")  # CLDR: one day is a word, no number


def test_an_unknown_locale_is_written_in_english() -> None:
    message = Renderer("no-reply@auth.example").render(
        "reset_unknown",
        to="reader@example.com",
        job_id=uuid.uuid4(),
        date=datetime(2026, 12, 7, tzinfo=UTC),
        context=CONTEXTS["reset_unknown"],
        locale="tlh",
    )
    assert message["Content-Language"] == "en"
    assert message["Subject"] == "Password reset requested"


def page_text(body: bytes) -> set[str]:
    """The words of a page, less the language switch (each language named in itself): the
    text between tags, and the messages in the script's data attributes (the site's name,
    `Chaser` here, is the same in every language)."""
    page = re.sub(r'<nav class="languages".*?</nav>', "", body.decode(), flags=re.S)
    page = re.sub(r"<title>.*?</title>", "", page)  # ends with the site's name
    found = re.findall(r">([^<>]*[A-Za-z][^<>]*)<", page)
    found += re.findall(r'data-plural-[a-z]+="([^"]*)"', page)
    return {" ".join(text.split()) for text in found if len(text.strip()) > 3}


def test_every_page_renders_in_every_language(tmp_path: Path) -> None:
    rendered = render_pages(make_settings(tmp_path))
    assert set(rendered) == set(SHIPPED)
    for locale, pages in rendered.items():
        assert set(pages) == set(PAGES)
        for body in pages.values():
            page = body.decode()
            assert f'<html lang="{i18n.tag(locale)}" dir="{i18n.direction(locale)}">' in page
            # The switch offers every language, each named in itself.
            for other in SHIPPED:
                assert f'hreflang="{i18n.tag(other)}"' in page
        if locale != "en":
            # Translated, every sentence: none of the English page's text is left.
            for path, body in pages.items():
                left = page_text(rendered["en"][path]) & page_text(body) - {"Chaser"}
                assert not left, (locale, path, left)
    assert "Passwort zurücksetzen" in rendered["de"]["/forgot-password"].decode()
    assert "Bestätigen Sie Ihre neue E-Mail-Adresse" in rendered["de"]["/change-email"].decode()
    assert "Holen Sie Ihr Konto" in rendered["de"]["/undo-email-change"].decode()
    assert "8 Ziffern" in rendered["de"]["/reset-password"].decode()
    assert 'dir="rtl"' in rendered["ar"]["/verify-email"].decode()
