"""The pages and a mail in other languages, in Chromium (docs/branding.md, "Languages"): German
and Arabic pages chosen by the browser's Accept-Language, at desktop width and at 320 px, Arabic
laid out right to left with nothing wider than the screen; the language switch, which keeps a
reset link's token; and a mail written in Japanese, its HTML part shown in the browser.

Screenshots go to `test-artifacts/screenshots/` (tests/web/conftest.py); docs/branding.md shows
some of them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from chaser_auth import i18n
from tests.conftest import (
    FakeClock,
    Served,
    Smtp,
    bound_socket,
    make_settings,
    require,
    serve,
    socket_url,
)
from tests.web.conftest import ARTIFACTS, Tab, checked_tab, shown

pytestmark = pytest.mark.asyncio(loop_scope="package")  # one Chromium: conftest.py

PAGES = [
    # path, the state the page opens in without a link, its heading in German and in Arabic
    ("forgot-password", "form", "Passwort zurücksetzen", "إعادة تعيين كلمة المرور"),
    ("reset-password", "code", "Code aus der E-Mail eingeben", "أدخل الرمز الوارد في الرسالة"),
    ("verify-email", "code", "Code aus der E-Mail eingeben", "أدخل الرمز الوارد في الرسالة"),
    (
        "change-email",
        "missing",
        "Öffnen Sie den Link aus Ihrer E-Mail",
        "افتح الرابط من بريدك الإلكتروني",
    ),
    (
        "undo-email-change",
        "missing",
        "Öffnen Sie den Link aus Ihrer E-Mail",
        "افتح الرابط من بريدك الإلكتروني",
    ),
]


async def fits(tab: Tab) -> bool:
    overflow = await tab.page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    return bool(overflow <= 0)


@pytest.mark.parametrize("locale", ["de", "ar"])
async def test_the_pages_follow_the_browsers_language(
    site: Served, any_tab: Tab, locale: str
) -> None:
    tab = any_tab
    accept = {"de": "de-DE,de;q=0.9,en;q=0.5", "ar": "ar-EG,ar;q=0.9"}[locale]
    await tab.page.set_extra_http_headers({"Accept-Language": accept})
    for path, opening, german, arabic in PAGES:
        response = await tab.page.goto(f"{site.url}/{path}")
        assert response.headers["content-language"] == locale
        await shown(tab, opening)
        root = tab.page.locator("html")
        assert await root.get_attribute("lang") == locale
        assert await root.get_attribute("dir") == ("rtl" if locale == "ar" else "ltr")
        heading = tab.page.locator(f'[data-state="{opening}"] h1')
        assert (await heading.inner_text()).strip() == (german if locale == "de" else arabic)
        direction = await heading.evaluate("node => getComputedStyle(node).direction")
        assert direction == ("rtl" if locale == "ar" else "ltr")
        if locale == "ar":
            # Right to left for real: the heading starts at the card's right edge.
            card = await tab.page.locator("main.card").bounding_box()
            box = await heading.bounding_box()
            text_right = await heading.evaluate(
                "node => { const r = document.createRange(); r.selectNodeContents(node);"
                " return r.getBoundingClientRect().right; }"
            )
            assert card is not None and box is not None
            assert abs(text_right - (box["x"] + box["width"])) < 2
        # The email field reads left to right in every language (the address-change pages
        # have none).
        field = tab.page.locator("input[type=email]").first
        if await field.count():
            assert await field.evaluate("node => getComputedStyle(node).direction") == "ltr"
        assert await fits(tab), f"{path} in {locale} is wider than the screen"
        await tab.shot(f"{path}-{locale}")


async def test_the_language_switch_changes_language_and_keeps_the_link(
    site: Served, tab: Tab
) -> None:
    await site.create_user("ann@example.com")
    link, _ = await site.reset_link("ann@example.com")
    page = tab.page
    await page.goto(link)
    await shown(tab, "form")
    assert await page.locator("html").get_attribute("lang") == "en"
    switch = page.locator("nav.languages")
    assert await switch.locator("a").count() == 7
    assert await switch.locator('a[aria-current="true"]').inner_text() == "English"

    await switch.get_by_text("Deutsch").click()
    await page.wait_for_url("**/reset-password?lang=de")
    await shown(tab, "form")  # the token came along: still the password form, not the code
    assert await page.locator("html").get_attribute("lang") == "de"
    assert "#" not in page.url  # and left the address bar again

    await page.locator("nav.languages").get_by_text("العربية").click()
    await page.wait_for_url("**/reset-password?lang=ar")
    await shown(tab, "form")
    assert await page.locator("html").get_attribute("dir") == "rtl"
    await tab.shot("reset-password-form-ar")
    # A reload keeps the chosen language (it is in the address) and the token (in the tab).
    await page.reload()
    await shown(tab, "form")
    assert await page.locator("html").get_attribute("lang") == "ar"


async def test_a_mail_written_in_japanese(site: Served, browser: Any) -> None:
    fonts = subprocess.run(
        ["fc-list", ":lang=ja"], capture_output=True, text=True, check=False
    ).stdout
    require(fonts.strip(), "a Japanese font is needed (apt-get install -y fonts-ipafont-gothic)")
    response = await site.client.post(
        "/auth/register",
        json={"email": "haruto@example.com", "password": "correct horse battery staple"},
        headers={"Accept-Language": "ja-JP,ja;q=0.9"},
    )
    assert response.status_code == 202
    assert site.smtp is not None
    [mail] = await site.smtp.sink.wait_for(1, to="haruto@example.com")
    assert mail.message["Content-Language"] == "ja"
    for width, height in ((1280, 800), (320, 640)):
        async with checked_tab(browser, width, height) as tab:
            await tab.page.set_content(mail.html())
            assert await tab.page.locator("html").get_attribute("lang") == "ja"
            heading = (await tab.page.locator("h1").inner_text()).strip()
            assert heading == "メールアドレスを確認してください"
            assert "1日" in (await tab.page.locator("body").inner_text()).replace(" ", "")
            assert await fits(tab)
            await tab.shot("mail-verify-email-ja")
    assert (ARTIFACTS / "mail-verify-email-ja-320.png").is_file()


async def test_a_count_the_script_learns_takes_its_languages_plural_form(
    tmp_path: Path, smtp: Smtp, clock: FakeClock, tab: Tab
) -> None:
    """The wait after too many requests, in Arabic (six plural forms): the script picks the
    form of the number it shows by the same CLDR rules the catalog's forms were made for."""
    sock = bound_socket()
    settings = make_settings(
        tmp_path, smtp_url=smtp.url, public_url=socket_url(sock), rate_limit_reset_per_ip="1/minute"
    )
    async with serve(settings, clock, smtp, sock) as site:
        page = tab.page
        await page.set_extra_http_headers({"Accept-Language": "ar"})
        for _ in range(2):
            await page.goto(f"{site.url}/forgot-password")
            await page.locator("#email").fill("kim@example.com")
            await page.locator("#forgot-form button[type=submit]").click()
        alert = page.get_by_role("alert")
        await alert.wait_for(state="visible")
        shown_text = (await alert.inner_text()).strip()
        [number] = re.findall(r"\d+", shown_text)
        category = i18n.plural_rule("ar")(int(number))
        form = await page.locator('[data-message="wait"]').get_attribute(f"data-plural-{category}")
        assert form is not None
        assert shown_text == form.replace("{seconds}", number)
        assert "طلبات كثيرة جدًا" in shown_text
