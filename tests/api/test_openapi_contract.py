"""The served OpenAPI document keeps the Chaser Core API contract.

The reference is read from the project's own copies — the seed document
(docs/seed/000_63cef650650d4c81.txt, its ```yaml block) and the two sibling definitions in
docs/chaser-api/ — so a change on either side shows up here. Our document is fetched over a
real socket from the running app (`app` fixture), exactly as a client would see it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Served

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "docs" / "seed" / "000_63cef650650d4c81.txt"
CHASER_API = ROOT / "docs" / "chaser-api"
METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")
ERROR_SCHEMA = "#/components/schemas/ErrorResponse"


def seed_document() -> dict[str, Any]:
    blocks = re.findall(r"^```yaml\n(.*?)^```", SEED.read_text(encoding="utf-8"), re.M | re.S)
    assert len(blocks) == 1, f"expected one ```yaml block in {SEED.name}, found {len(blocks)}"
    document: dict[str, Any] = yaml.safe_load(blocks[0])
    return document


def chaser_document(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((CHASER_API / name).read_text(encoding="utf-8"))
    return document


REFERENCES: dict[str, dict[str, Any]] = {
    "seed": seed_document(),
    "confirm-password-reset": chaser_document("confirm-password-reset.yaml"),
    "verify-email": chaser_document("verify-email.yaml"),
}


def operations() -> list[Any]:
    found = []
    for source, document in REFERENCES.items():
        for path, item in document["paths"].items():
            for method, operation in item.items():
                if method not in METHODS:
                    continue
                found.append(pytest.param(path, method, operation, id=f"{source}:{method}:{path}"))
    return found


def schemas() -> list[Any]:
    found = []
    for source, document in REFERENCES.items():
        for name, schema in document["components"]["schemas"].items():
            found.append(pytest.param(name, schema, id=f"{source}:{name}"))
    return found


def ref_name(schema: dict[str, Any]) -> str:
    ref = schema.get("$ref")
    assert isinstance(ref, str) and ref.startswith("#/components/schemas/"), schema
    return ref.rpartition("/")[2]


def json_schema(content_holder: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = content_holder["content"]["application/json"]["schema"]
    return schema


def type_of(prop: dict[str, Any]) -> object:
    if "$ref" in prop:
        return ("$ref", prop["$ref"])
    if "anyOf" in prop:
        return tuple(sorted(str(type_of(option)) for option in prop["anyOf"]))
    return prop.get("type")


@pytest.fixture
async def ours(app: Served) -> dict[str, Any]:
    response = await app.client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document: dict[str, Any] = response.json()
    return document


def test_reference_documents_are_read_from_the_project_copies() -> None:
    # Guards the parametrisation below: an empty extraction would make every check vacuous.
    operation_ids = {
        operation["operationId"]
        for document in REFERENCES.values()
        for item in document["paths"].values()
        for operation in item.values()
    }
    assert operation_ids == {"request-password-reset", "confirm-password-reset", "verify-email"}
    names = {name for document in REFERENCES.values() for name in document["components"]["schemas"]}
    assert names == {
        "PasswordResetRequest",
        "MessageResponse",
        "PasswordResetConfirmRequest",
        "AuthResponse",
        "VerifyEmailRequest",
    }


@pytest.mark.parametrize(("path", "method", "theirs"), operations())
async def test_operation_matches_the_chaser_definition(
    ours: dict[str, Any], path: str, method: str, theirs: dict[str, Any]
) -> None:
    assert path in ours["paths"], f"{path} is not served"
    assert method in ours["paths"][path], f"{method.upper()} {path} is not served"
    operation = ours["paths"][path][method]

    assert operation["operationId"] == theirs["operationId"]
    assert operation["summary"] == theirs["summary"]
    assert operation.get("tags") == theirs.get("tags")
    assert ref_name(json_schema(operation["requestBody"])) == ref_name(
        json_schema(theirs["requestBody"])
    )

    ok, their_ok = operation["responses"]["200"], theirs["responses"]["200"]
    assert ref_name(json_schema(ok)) == ref_name(json_schema(their_ok))
    assert ok["description"] == their_ok["description"]

    # Chaser's documented errors are ours too, with the same wording (in our error shape).
    for status, their_response in theirs["responses"].items():
        if str(status) == "200":
            continue
        assert str(status) in operation["responses"], f"{status} is not documented"
        assert operation["responses"][str(status)]["description"] == their_response["description"]


@pytest.mark.parametrize(("name", "theirs"), schemas())
async def test_schema_matches_the_chaser_definition(
    ours: dict[str, Any], name: str, theirs: dict[str, Any]
) -> None:
    components = ours["components"]["schemas"]
    assert name in components, f"schema {name} is missing"
    schema = components[name]

    assert schema.get("type") == theirs["type"]
    assert set(schema["properties"]) == set(theirs["properties"])
    for prop, definition in theirs["properties"].items():
        assert type_of(schema["properties"][prop]) == type_of(definition), f"{name}.{prop}"
    assert sorted(schema.get("required", [])) == sorted(theirs.get("required", []))
    assert schema.get("description") == theirs["description"]
    assert schema.get("title") == theirs["title"]


async def test_every_error_response_uses_the_one_error_schema(ours: dict[str, Any]) -> None:
    errors = []
    for path, item in ours["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status == "default" or int(status) >= 400:
                    errors.append((f"{method.upper()} {path} {status}", response))
    assert errors, "the document declares no error responses at all"
    for where, response in errors:
        assert ref_name(json_schema(response)) == "ErrorResponse", where
        assert json_schema(response)["$ref"] == ERROR_SCHEMA, where

    error = ours["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"]
    body = ours["components"]["schemas"][ref_name(error["properties"]["error"])]
    assert set(body["properties"]) == {"code", "message", "details"}
    assert sorted(body["required"]) == ["code", "details", "message"]
    assert body["properties"]["code"]["type"] == "string"
    assert body["properties"]["message"]["type"] == "string"
    assert body["properties"]["details"]["type"] == "array"


async def test_docs_page_loads_swagger_ui_from_this_origin_only(app: Served) -> None:
    response = await app.client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "/openapi.json" in html
    assert "SwaggerUIBundle(" in html
    # No URL to another host: nothing absolute, nothing scheme-relative.
    assert "http://" not in html and "https://" not in html, html
    assert not re.search(r"""(?:src|href)\s*=\s*["']?//""", html), html

    # Every asset the page names is one of ours, and is served.
    references = re.findall(r"""(?:src|href)\s*=\s*"([^"]*)\"""", html)
    assert len(references) == 3, references  # the script, the stylesheet, the icon
    kinds = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
    for reference in references:
        assert reference.startswith("/docs/static/"), reference
        asset = await app.client.get(reference)
        assert asset.status_code == 200, reference
        assert kinds[Path(reference).suffix] in asset.headers["content-type"], reference
        assert len(asset.content) > 100, reference
    swagger = (await app.client.get("/docs/static/swagger-ui-bundle.js")).text
    assert "SwaggerUIBundle" in swagger
    assert "isOAS31" in swagger  # our document is OpenAPI 3.1, which Swagger UI 4 cannot render

    # The one inline script runs by its hash, no 'unsafe-inline'; the rest from this origin.
    [script] = re.findall(r"<script>(.*?)</script>", html, re.S)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = dict(
        [*part.strip().split(" ", 1), ""][:2]
        for part in response.headers["content-security-policy"].split(";")
    )
    assert policy["script-src"] == f"'self' 'sha256-{digest}'"
    assert policy["default-src"] == "'none'"
    assert policy["style-src"] == "'self'"
    assert "unsafe" not in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"

    # Of the package, only those three files: not its demo page (it loads a third-party
    # document), not its set-up script, not its source maps, nothing outside it.
    for name in (
        "index.html",
        "swagger-initializer.js",
        "swagger-ui-bundle.js.map",
        "../__init__.py",
        "%2e%2e/__init__.py",
    ):
        refused = await app.client.get(f"/docs/static/{name}")
        assert refused.status_code == 404, name
        assert refused.json()["error"]["code"] == "not_found", name
