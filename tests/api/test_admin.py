"""The admin API (docs/operations.md, "The admin API"): every action over HTTP on the operator
listener, with the effect checked on the public listener (logins, sessions, links) and the mail
received by a real SMTP server; keys refused, accepted and rotated; every call in the audit
trail with its key's name; nothing of it on the public listener or in the public OpenAPI."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chaser_auth.config import Settings
from chaser_auth.domain.admin import key_digest
from tests.conftest import (
    EVERY_BACKEND,
    NEW_PASSWORD,
    PASSWORD,
    FakeClock,
    Served,
    Smtp,
    make_settings,
    serve,
)
from tests.test_cli import cli, tmp_env

BACKENDS = EVERY_BACKEND

SUPPORT = "chak_support-key-for-the-tests-0123456789abcdefghijk"
BACKOFFICE = "chak_backoffice-key-for-the-tests-0123456789abcdefgh"
NEWER = "chak_the-replacement-key-for-the-tests-0123456789abcd"


def keys(**named: str) -> str:
    return ",".join(f"{name}:{key_digest(key)}" for name, key in named.items())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextlib.asynccontextmanager
async def served(
    tmp_path: Path,
    clock: FakeClock,
    smtp: Smtp,
    backend_settings: dict[str, Any],
    admin_keys: str,
    **overrides: Any,
) -> AsyncIterator[Served]:
    settings = make_settings(
        tmp_path, smtp_url=smtp.url, admin_keys=admin_keys, **backend_settings, **overrides
    )
    async with serve(settings, clock, smtp) as app:
        assert app.operator is not None
        yield app


@pytest.fixture
async def admin(
    tmp_path: Path, clock: FakeClock, smtp: Smtp, backend_settings: dict[str, Any]
) -> AsyncIterator[Served]:
    async with served(
        tmp_path, clock, smtp, backend_settings, keys(support=SUPPORT, backoffice=BACKOFFICE)
    ) as app:
        yield app


class Admin:
    """The admin API of `app`, called with `key`."""

    def __init__(self, app: Served, key: str) -> None:
        assert app.operator is not None
        self.http = app.operator
        self.headers = bearer(key) if key else {}

    async def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return await self.http.request(method, f"/admin{path}", headers=self.headers, **kw)


async def login(app: Served, email: str, password: str = PASSWORD) -> httpx.Response:
    return await app.client.post("/auth/login", json={"email": email, "password": password})


async def me(app: Served, token: str) -> httpx.Response:
    return await app.client.get("/auth/me", headers=bearer(token))


async def admin_calls(app: Served) -> list[dict[str, Any]]:
    events = await app.runtime.housekeeping.audit_trail(event="admin_call", limit=10_000)
    return [{**(event.detail or {}), "user_id": event.user_id} for event in events]


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    return str(body["error"]["code"])


# -- accounts, sessions, recovery ---------------------------------------------------------------


async def test_each_account_action_works_and_is_audited_with_its_keys_name(
    admin: Served,
) -> None:
    support = Admin(admin, SUPPORT)
    created = await support.call(
        "POST", "/accounts", json={"email": " Carol@Example.com ", "password": PASSWORD}
    )
    assert created.status_code == 201, created.text
    account = created.json()
    carol = account["id"]
    assert account["email"] == "Carol@example.com"
    assert account["active"] and account["email_verified"] and account["has_password"]
    assert set(account) == {
        "id",
        "email",
        "email_verified",
        "active",
        "has_password",
        "created_at",
        "password_changed_at",
    }
    assert (await login(admin, "carol@example.com")).status_code == 200

    again = await support.call(
        "POST", "/accounts", json={"email": "carol@example.com", "password": PASSWORD}
    )
    assert again.status_code == 409 and error_code(again) == "account_exists"
    weak = await support.call("POST", "/accounts", json={"email": "d@example.com", "password": "x"})
    assert weak.status_code == 422 and error_code(weak) == "weak_password"
    both = await support.call(
        "POST", "/accounts", json={"email": "d@example.com", "password": PASSWORD, "invite": True}
    )
    assert both.status_code == 422 and error_code(both) == "invalid_request"

    # find and read
    found = await support.call("GET", "/accounts", params={"email": "CAROL@example.com"})
    assert found.status_code == 200 and [a["id"] for a in found.json()["accounts"]] == [carol]
    nobody = await support.call("GET", "/accounts", params={"email": "nobody@example.com"})
    assert nobody.json() == {"accounts": []}
    await admin.create_user("dave@example.com")
    everyone = await support.call("GET", "/accounts")
    assert [a["email"] for a in everyone.json()["accounts"]] == [
        "Carol@example.com",
        "dave@example.com",
    ]
    page = await support.call("GET", "/accounts", params={"offset": 1, "limit": 1})
    assert [a["email"] for a in page.json()["accounts"]] == ["dave@example.com"]
    read = await support.call("GET", f"/accounts/{carol}")
    assert read.status_code == 200 and read.json() == account
    missing = await support.call("GET", f"/accounts/{uuid.uuid4()}")
    assert missing.status_code == 404 and error_code(missing) == "not_found"
    malformed = await support.call("GET", "/accounts/not-a-uuid")
    assert malformed.status_code == 422 and error_code(malformed) == "invalid_request"

    # sessions: list, end one, end the rest
    tokens = [(await login(admin, "carol@example.com")).json()["token"] for _ in range(3)]
    listed = (await support.call("GET", f"/accounts/{carol}/sessions")).json()["sessions"]
    assert len(listed) == 4  # the first login's too
    assert all(set(s) == {"id", "created_at", "last_seen_at", "expires_at"} for s in listed)
    one = listed[0]["id"]
    ended = await support.call("DELETE", f"/accounts/{carol}/sessions/{one}")
    assert ended.status_code == 204
    again_ended = await support.call("DELETE", f"/accounts/{carol}/sessions/{one}")
    assert again_ended.status_code == 404 and error_code(again_ended) == "not_found"
    rest = await support.call("DELETE", f"/accounts/{carol}/sessions")
    assert rest.status_code == 200 and rest.json() == {"ended": 3}
    for token in tokens:
        assert (await me(admin, token)).status_code == 401
    assert (await support.call("GET", f"/accounts/{carol}/sessions")).json() == {"sessions": []}

    # disable and enable
    disabled = await support.call("POST", f"/accounts/{carol}/disable")
    assert disabled.status_code == 200 and disabled.json()["active"] is False
    assert (await login(admin, "carol@example.com")).status_code == 401
    refused = await support.call("POST", f"/accounts/{carol}/recovery-link")
    assert refused.status_code == 409 and error_code(refused) == "account_disabled"
    enabled = await support.call("POST", f"/accounts/{carol}/enable")
    assert enabled.status_code == 200 and enabled.json()["active"] is True
    assert (await login(admin, "carol@example.com")).status_code == 200

    # a recovery link for support to hand over: it sets a new password on the public listener
    issued = await support.call("POST", f"/accounts/{carol}/recovery-link")
    assert issued.status_code == 201
    link = issued.json()["link"]
    assert link.startswith(f"{admin.settings.public_url}/reset-password#token=")
    assert issued.json()["expires_at"]
    confirmed = await admin.client.post(
        "/auth/password-reset/confirm",
        json={"token": link.rpartition("=")[2], "password": NEW_PASSWORD},
    )
    assert confirmed.status_code == 200, confirmed.text
    assert (await login(admin, "carol@example.com", NEW_PASSWORD)).status_code == 200

    # delete
    deleted = await support.call("DELETE", f"/accounts/{carol}")
    assert deleted.status_code == 204
    assert (await support.call("GET", f"/accounts/{carol}")).status_code == 404
    assert (await support.call("DELETE", f"/accounts/{carol}")).status_code == 404
    assert (await login(admin, "carol@example.com", NEW_PASSWORD)).status_code == 401

    # Every call above is in the trail, in order, with the key's name, the operation, the
    # status it was answered with and the account it was about.
    calls = await admin_calls(admin)
    assert [(c["operation"], c["status"]) for c in calls] == [
        ("admin-create-account", 201),
        ("admin-create-account", 409),
        ("admin-create-account", 422),
        ("admin-create-account", 422),
        ("admin-list-accounts", 200),
        ("admin-list-accounts", 200),
        ("admin-list-accounts", 200),
        ("admin-list-accounts", 200),
        ("admin-get-account", 200),
        ("admin-get-account", 404),
        ("admin-get-account", 422),
        ("admin-list-sessions", 200),
        ("admin-end-session", 204),
        ("admin-end-session", 404),
        ("admin-end-sessions", 200),
        ("admin-list-sessions", 200),
        ("admin-disable-account", 200),
        ("admin-recovery-link", 409),
        ("admin-enable-account", 200),
        ("admin-recovery-link", 201),
        ("admin-delete-account", 204),
        ("admin-get-account", 404),
        ("admin-delete-account", 404),
    ]
    assert {c["admin_key"] for c in calls} == {"support"}
    about_carol = [c["operation"] for c in calls if str(c["user_id"]) == carol]
    assert about_carol[0] == "admin-create-account" and "admin-delete-account" in about_carol

    # The actions' own events name the key too.
    trail = await admin.runtime.housekeeping.audit_trail(user_id=uuid.UUID(carol), limit=1000)
    by_key = {e.event for e in trail if (e.detail or {}).get("admin_key") == "support"}
    assert {
        "account_created",
        "session_ended",
        "sessions_ended_by_operator",
        "account_disabled",
        "account_enabled",
        "reset_link_issued_by_operator",
        "account_deleted",
    } <= by_key


async def test_an_invitation_mails_a_link_that_sets_the_first_password(admin: Served) -> None:
    assert admin.smtp is not None
    backoffice = Admin(admin, BACKOFFICE)
    invited = await backoffice.call(
        "POST", "/accounts", json={"email": "erin@example.com", "invite": True}
    )
    assert invited.status_code == 201, invited.text
    account = invited.json()
    assert account["has_password"] is False and account["password_changed_at"] is None
    assert account["active"] is True
    # No password works until one is chosen through the mailed link.
    assert (await login(admin, "erin@example.com")).status_code == 401

    [mail] = await admin.smtp.sink.wait_for(1, to="erin@example.com")
    assert mail.message["Subject"] == "Set a password for your new account"
    link, token = mail.link()
    assert link.startswith(f"{admin.settings.public_url}/reset-password#token=")
    assert "7 days" in mail.text()
    verified = await admin.client.post("/auth/password-reset/verify", json={"token": token})
    assert verified.status_code == 200
    confirmed = await admin.client.post(
        "/auth/password-reset/confirm", json={"token": token, "password": PASSWORD}
    )
    assert confirmed.status_code == 200, confirmed.text
    assert (await login(admin, "erin@example.com")).status_code == 200
    now = (await backoffice.call("GET", f"/accounts/{account['id']}")).json()
    assert now["has_password"] is True and now["email_verified"] is True
    # Used once, gone.
    again = await admin.client.post(
        "/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD}
    )
    assert again.status_code == 400

    twice = await backoffice.call(
        "POST", "/accounts", json={"email": "ERIN@example.com", "invite": True}
    )
    assert twice.status_code == 409
    events = await admin.runtime.housekeeping.audit_trail(
        user_id=uuid.UUID(account["id"]), limit=100
    )
    invited_event = next(e for e in events if e.event == "account_invited")
    assert invited_event.detail == {"admin_key": "backoffice"}
    assert "invitation_link_issued" in {e.event for e in events}
    assert {c["admin_key"] for c in await admin_calls(admin)} == {"backoffice"}


async def test_dead_letters_are_listed_and_retried(admin: Served) -> None:
    assert admin.smtp is not None
    support = Admin(admin, SUPPORT)
    await admin.create_user("frank@example.com")
    admin.smtp.sink.fail_with = "550 5.1.1 mailbox unavailable"
    assert (await admin.request_reset("frank@example.com")).status_code == 200
    await admin.outbox_until(lambda rows: any(r.status == "dead" for r in rows))

    listed = await support.call("GET", "/dead-letters")
    assert listed.status_code == 200
    [dead] = listed.json()["dead_letters"]
    assert dead["kind"] == "password_reset_request" and dead["last_error"]
    assert set(dead) == {
        "id",
        "kind",
        "user_id",
        "attempts",
        "created_at",
        "finished_at",
        "last_error",
    }

    admin.smtp.sink.fail_with = None
    retried = await support.call("POST", f"/dead-letters/{dead['id']}/retry")
    assert retried.status_code == 202
    [mail] = await admin.smtp.sink.wait_for(1, to="frank@example.com")
    assert mail.link()
    assert (await support.call("GET", "/dead-letters")).json() == {"dead_letters": []}
    gone = await support.call("POST", f"/dead-letters/{dead['id']}/retry")
    assert gone.status_code == 404 and error_code(gone) == "not_found"

    calls = [(c["operation"], c["status"], c["admin_key"]) for c in await admin_calls(admin)]
    assert calls == [
        ("admin-list-dead-letters", 200, "support"),
        ("admin-retry-dead-letter", 202, "support"),
        ("admin-list-dead-letters", 200, "support"),
        ("admin-retry-dead-letter", 404, "support"),
    ]
    [retry] = await admin.runtime.housekeeping.audit_trail(event="dead_letter_retried")
    assert retry.detail == {"message": dead["id"], "admin_key": "support"}


# -- keys ---------------------------------------------------------------------------------------


async def test_a_missing_or_wrong_key_is_refused_before_anything_and_audited(
    admin: Served,
) -> None:
    assert admin.operator is not None
    await admin.create_user("grace@example.com")
    [user] = await admin.runtime.admin.listing()
    attempts: list[tuple[str, dict[str, str]]] = [
        ("no header", {}),
        ("bearer and no key", {"Authorization": "Bearer"}),
        ("wrong key", bearer("chak_" + "x" * 43)),
        ("a key's digest", bearer(key_digest(SUPPORT))),
        ("a key's prefix", bearer(SUPPORT[:-1])),
        ("basic scheme", {"Authorization": f"Basic {SUPPORT}"}),
        ("key without scheme", {"Authorization": SUPPORT}),
    ]
    for what, headers in attempts:
        for method, path, body in (
            ("GET", "/admin/accounts", None),
            ("POST", f"/admin/accounts/{user.id}/disable", None),
            ("DELETE", f"/admin/accounts/{user.id}", None),
            ("POST", "/admin/accounts", {"not": "valid"}),  # 401, not 422: the key comes first
        ):
            answer = await admin.operator.request(method, path, headers=headers, json=body)
            assert answer.status_code == 401, (what, method, path, answer.text)
            assert error_code(answer) == "not_authenticated"
            assert answer.headers["www-authenticate"].startswith('Bearer realm="chaser-auth admin"')
    assert (await login(admin, "grace@example.com")).status_code == 200  # nothing happened
    assert await admin_calls(admin) == []
    refused = await admin.runtime.housekeeping.audit_trail(event="admin_refused", limit=1000)
    assert len(refused) == len(attempts) * 4
    assert {(e.detail or {})["reason"] for e in refused} == {"no_key", "unknown_key"}
    assert all(e.client == "127.0.0.1" and e.user_id is None for e in refused)
    assert "admin_key" not in str([e.detail for e in refused])


async def test_a_rotated_key_is_accepted_and_the_old_one_refused_once_removed(
    tmp_path: Path, clock: FakeClock, smtp: Smtp, backend_settings: dict[str, Any]
) -> None:
    # Step 1 of a rotation: the new key is added beside the old one; both work.
    async with served(
        tmp_path, clock, smtp, backend_settings, keys(support=SUPPORT, support_2027=NEWER)
    ) as app:
        for key in (SUPPORT, NEWER):
            assert (await Admin(app, key).call("GET", "/accounts")).status_code == 200
        assert [c["admin_key"] for c in await admin_calls(app)] == ["support", "support_2027"]
    # Step 2: the old pair is removed from the configuration; only the new key works.
    async with served(tmp_path, clock, smtp, backend_settings, keys(support_2027=NEWER)) as app:
        old = await Admin(app, SUPPORT).call("GET", "/accounts")
        assert old.status_code == 401
        assert (await Admin(app, NEWER).call("GET", "/accounts")).status_code == 200
        calls = await admin_calls(app)
        assert [c["admin_key"] for c in calls] == ["support", "support_2027", "support_2027"]


async def test_with_no_keys_configured_every_admin_call_is_refused(
    tmp_path: Path, clock: FakeClock, smtp: Smtp, backend_settings: dict[str, Any]
) -> None:
    async with served(tmp_path, clock, smtp, backend_settings, "") as app:
        for key in ("", SUPPORT):
            answer = await Admin(app, key).call("GET", "/accounts")
            assert answer.status_code == 401 and error_code(answer) == "not_authenticated"


# -- where it is served -------------------------------------------------------------------------


async def test_the_admin_api_is_absent_from_the_public_listener_and_its_openapi(
    admin: Served,
) -> None:
    assert admin.operator is not None
    user = await admin.create_user("heidi@example.com")
    for method, path in (
        ("GET", "/admin/accounts"),
        ("GET", f"/admin/accounts/{user}"),
        ("POST", f"/admin/accounts/{user}/disable"),
        ("DELETE", f"/admin/accounts/{user}"),
        ("GET", "/admin/dead-letters"),
        ("GET", "/admin/openapi.json"),
    ):
        answer = await admin.client.request(method, path, headers=bearer(SUPPORT))
        assert answer.status_code == 404, (method, path)
        assert error_code(answer) == "not_found"
    assert (await login(admin, "heidi@example.com")).status_code == 200  # still enabled
    public = (await admin.client.get("/openapi.json")).json()
    assert not [p for p in public["paths"] if p.startswith("/admin")]
    assert "AdminKey" not in str(public)
    assert "Account" not in public["components"]["schemas"]

    document = (await admin.operator.get("/admin/openapi.json")).json()
    assert document["info"]["title"] == "chaser-auth admin API"
    assert sorted(document["paths"]) == [
        "/admin/accounts",
        "/admin/accounts/{account_id}",
        "/admin/accounts/{account_id}/disable",
        "/admin/accounts/{account_id}/enable",
        "/admin/accounts/{account_id}/recovery-link",
        "/admin/accounts/{account_id}/sessions",
        "/admin/accounts/{account_id}/sessions/{session_id}",
        "/admin/dead-letters",
        "/admin/dead-letters/{message_id}/retry",
    ]
    assert document["components"]["securitySchemes"]["AdminKey"]["scheme"] == "bearer"
    for operations in document["paths"].values():
        for operation in operations.values():
            assert operation["security"] == [{"AdminKey": []}]
            assert "401" in operation["responses"]
    assert await admin_calls(admin) == []  # the document is no call


# -- making keys --------------------------------------------------------------------------------


def test_admin_key_prints_a_key_and_the_pair_that_admits_it(tmp_path: Path) -> None:
    done = cli("admin-key", "billing", cwd=tmp_path, env=tmp_env(tmp_path))
    assert done.returncode == 0, done.stderr
    key_line, pair_line = done.stdout.splitlines()
    key = key_line.rpartition(" ")[2]
    pair = pair_line.rpartition(" ")[2]
    assert key.startswith("chak_") and len(key) == 5 + 43
    assert pair == f"billing:{key_digest(key)}"
    assert key not in pair
    assert not (tmp_path / "state").exists()  # no database, no secret key: nothing written
    settings = Settings(_env_file=None, admin_keys=f"{pair},other:{key_digest('x')}")
    assert settings.admin_key_digests["billing"] == key_digest(key)

    bad = cli("admin-key", "no spaces", cwd=tmp_path, env=tmp_env(tmp_path))
    assert bad.returncode == 1 and bad.stdout == "" and "name" in bad.stderr


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (SUPPORT, "name:digest"),  # the key pasted in place of a pair
        (f"support:{SUPPORT}", "not the key itself"),
        (f"support:{key_digest(SUPPORT)},support:{key_digest(NEWER)}", "used twice"),
        (f"sup port:{key_digest(SUPPORT)}", "name:digest"),
    ],
)
def test_a_malformed_key_setting_stops_the_process_without_echoing_it(
    tmp_path: Path, value: str, says: str
) -> None:
    done = cli("users", "list", cwd=tmp_path, env=tmp_env(tmp_path, CHASER_AUTH_ADMIN_KEYS=value))
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("chaser-auth: configuration: CHASER_AUTH_ADMIN_KEYS: ")
    assert says in line
    assert SUPPORT not in line
