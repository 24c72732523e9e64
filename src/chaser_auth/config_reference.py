"""docs/configuration.md, written from `config.Settings`: each field's environment variable, type,
default and `description`. The service never imports this module; run it after changing a
setting, from the repository's root:

    .venv/bin/python -m chaser_auth.config_reference           # rewrite the page
    .venv/bin/python -m chaser_auth.config_reference --check   # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import sys
import types
from enum import Enum
from pathlib import Path, PurePath
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from chaser_auth.config import Settings

PAGE = Path("docs/configuration.md")
COMMAND = "python -m chaser_auth.config_reference"

HEADER = f"""\
# Configuration

<!-- Written by `{COMMAND}` from the field descriptions in
src/chaser_auth/config.py: change them there, then run it again. -->

Every setting is an environment variable; a `.env` file in the working directory is read too.
Each process reads them once, when it starts: restart `serve` and the workers after changing
one. A value that cannot be used stops the process with one line naming the variable.
Rate limits are written in the form of the [`limits`](https://limits.readthedocs.io/) library,
a count per period (`10/minute`, `3/hour`).

| variable | type | default | meaning |
|---|---|---|---|
"""

_TYPES: dict[Any, str] = {
    str: "text",
    int: "integer",
    float: "number",
    bool: "`true` or `false`",
    Path: "path",
    SecretStr: "text (secret)",
}


def render(settings: type[BaseModel] = Settings) -> str:
    """The page, one table row per field, in the class's order."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    rows = []
    for name, field in settings.model_fields.items():
        if not field.description:
            raise ValueError(f"{settings.__name__}.{name} has no description")
        rows.append(
            f"| `{prefix}{name.upper()}` | {_type(field)} | {_default(field)} "
            f"| {_cell(field.description)} |\n"
        )
    return HEADER + "".join(rows)


def _type(field: FieldInfo) -> str:
    annotation = field.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    if get_origin(annotation) is Literal:
        return " or ".join(f"`{value}`" for value in get_args(annotation))
    text = _TYPES.get(annotation, getattr(annotation, "__name__", str(annotation)))
    bounds: dict[str, Any] = {}
    for rule in field.metadata:
        for kind in ("gt", "ge", "lt", "le"):
            if isinstance(rule, getattr(annotated_types, kind.capitalize())):
                bounds[kind] = getattr(rule, kind)
    if "ge" in bounds and "le" in bounds:
        return f"{text} from {bounds['ge']} to {bounds['le']}"
    for kind, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
        if kind in bounds:
            text += f" {sign} {bounds[kind]}"
    return text


def _default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, PurePath) and not value.is_absolute():
        text = f"./{value}"
    elif value == "":
        return "empty"
    else:
        text = str(value)
    return f"`{text}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=COMMAND, description=f"Write {PAGE} from the settings' field descriptions."
    )
    parser.add_argument("--output", type=Path, default=PAGE, help=f"default {PAGE}")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the page is out of date"
    )
    args = parser.parse_args(argv)
    page = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != page:
            sys.stderr.write(f"{args.output} is out of date: run {COMMAND}\n")
            return 1
        return 0
    args.output.write_text(page, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
