"""The documentation made from the code says what the code does."""

from __future__ import annotations

from pathlib import Path

from chaser_auth import config_reference
from chaser_auth.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_has_a_description() -> None:
    missing = [name for name, field in Settings.model_fields.items() if not field.description]
    assert not missing, f"Settings fields without Field(description=...): {missing}"


def test_the_configuration_page_is_the_one_generated_from_the_settings() -> None:
    committed = (ROOT / config_reference.PAGE).read_text(encoding="utf-8")
    assert committed == config_reference.render(), (
        f"{config_reference.PAGE} is out of date: run .venv/bin/{config_reference.COMMAND}"
    )


def test_the_configuration_page_names_every_variable_with_its_default() -> None:
    page = (ROOT / config_reference.PAGE).read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(" `"): line for line in page.splitlines() if "| `" in line}
    assert set(rows) == {f"CHASER_AUTH_{name.upper()}" for name in Settings.model_fields}
    assert "| `1800` |" in rows["CHASER_AUTH_RESET_TOKEN_TTL"]
    assert "| unset |" in rows["CHASER_AUTH_SMTP_URL"]
    assert "| `./var/mail` |" in rows["CHASER_AUTH_MAIL_DIR"]
    assert "| `json` or `text` |" in rows["CHASER_AUTH_LOG_FORMAT"]


def test_the_check_fails_on_a_stale_page(tmp_path: Path) -> None:
    page = tmp_path / "configuration.md"
    assert config_reference.main(["--output", str(page), "--check"]) == 1  # no page yet
    assert config_reference.main(["--output", str(page)]) == 0
    assert config_reference.main(["--output", str(page), "--check"]) == 0
    page.write_text(page.read_text(encoding="utf-8").replace("`1800`", "`900`"), "utf-8")
    assert config_reference.main(["--output", str(page), "--check"]) == 1
