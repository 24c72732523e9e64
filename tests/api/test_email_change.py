"""Changing the account's address (docs/api.md), end to end over a real socket with a real SMTP
server: the same answer for a free and a taken new address; the confirmation link to the new
address moves the account, ends every other session and kills reset links mailed to the old
one; the notice to the old address carries an undo link that moves it back."""

from __future__ import annotations

import re

import httpx

from tests.conftest import EVERY_BACKEND, NEW_PASSWORD, PASSWORD, Served

BACKENDS = EVERY_BACKEND
OLD = "erin@example.com"
NEW = "erin.new@example.org"
TAKEN = "frank@example.com"
CHANGE = "/auth/email/change"
CHANGE_LINK = re.compile(r"/change-email#token=([A-Za-z0-9_-]{43,})")
UNDO_LINK = re.compile(r"/undo-email-change#token=([A-Za-z0-9_-]{43,})")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(app: Served, email: str, password: str = PASSWORD) -> httpx.Response:
    return await app.client.post("/auth/login", json={"email": email, "password": password})


async def session(app: Served, email: str) -> str:
    response = await login(app, email)
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def ask(app: Served, token: str, email: str, password: str = PASSWORD) -> httpx.Response:
    return await app.client.post(
        CHANGE, json={"current_password": password, "email": email}, headers=bearer(token)
    )


def same_answer(a: httpx.Response, b: httpx.Response) -> None:
    assert (a.status_code, a.content) == (b.status_code, b.content)
    vary = {"date", "x-request-id"}
    assert {k: v for k, v in a.headers.items() if k not in vary} == {
        k: v for k, v in b.headers.items() if k not in vary
    }


async def test_the_change_end_to_end_and_its_undo(app: Served) -> None:
    assert app.smtp is not None
    await app.create_user(OLD)
    phone = await session(app, OLD)
    laptop = await session(app, OLD)
    _, old_reset = await app.reset_link(OLD)  # a reset link mailed to the old address

    asked = await ask(app, laptop, NEW)
    assert asked.status_code == 202
    [confirm_mail] = await app.smtp.sink.wait_for(1, to=NEW)
    found = CHANGE_LINK.search(confirm_mail.text())
    assert found and f"{app.settings.public_url}/change-email#token=" in confirm_mail.text()
    assert (await login(app, OLD)).status_code == 200  # nothing changed before the link

    confirmed = await app.client.post(f"{CHANGE}/confirm", json={"token": found.group(1)})
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["email"] == NEW
    fresh = confirmed.json()["token"]
    me = await app.client.get("/auth/me", headers=bearer(fresh))
    assert me.json()["email"] == NEW and me.json()["email_verified"] is True
    for ended in (phone, laptop):
        assert (await app.client.get("/auth/me", headers=bearer(ended))).status_code == 401
    dead = await app.client.post(
        "/auth/password-reset/confirm", json={"token": old_reset, "password": NEW_PASSWORD}
    )
    assert dead.status_code == 400  # the old address's reset link died
    assert (await login(app, OLD)).status_code == 401
    assert (await login(app, NEW)).status_code == 200
    again = await app.client.post(f"{CHANGE}/confirm", json={"token": found.group(1)})
    assert again.status_code == 400  # single use

    notices = await app.smtp.sink.wait_for(2, to=OLD)  # the reset mail, then the notice
    notice = notices[-1]
    assert NEW in notice.text()
    undo = UNDO_LINK.search(notice.text())
    assert undo
    undone = await app.client.post(f"{CHANGE}/undo", json={"token": undo.group(1)})
    assert undone.status_code == 200, undone.text
    assert OLD in undone.json()["message"]
    assert (await app.client.get("/auth/me", headers=bearer(fresh))).status_code == 401
    assert (await login(app, NEW)).status_code == 401
    assert (await login(app, OLD)).status_code == 200
    twice = await app.client.post(f"{CHANGE}/undo", json={"token": undo.group(1)})
    assert twice.status_code == 400


async def test_a_taken_address_gets_the_same_answer_and_no_link(app: Served) -> None:
    assert app.smtp is not None
    await app.create_user(OLD)
    await app.create_user(TAKEN)
    token = await session(app, OLD)
    free = await ask(app, token, NEW)
    taken = await ask(app, token, TAKEN)
    same_answer(free, taken)
    assert taken.status_code == 202
    await app.smtp.sink.wait_for(1, to=NEW)
    await app.settle()
    assert app.smtp.sink.to(TAKEN) == []  # its owner is not bothered by a stranger's try
    assert (await login(app, TAKEN)).status_code == 200
    assert (await login(app, OLD)).status_code == 200


async def test_the_address_taken_before_the_link_is_followed(app: Served) -> None:
    assert app.smtp is not None
    await app.create_user(OLD)
    token = await session(app, OLD)
    assert (await ask(app, token, NEW)).status_code == 202
    [mail] = await app.smtp.sink.wait_for(1, to=NEW)
    found = CHANGE_LINK.search(mail.text())
    assert found
    await app.create_user(NEW)
    refused = await app.client.post(f"{CHANGE}/confirm", json={"token": found.group(1)})
    assert refused.status_code == 400
    assert (await login(app, OLD)).status_code == 200


async def test_the_password_is_needed_and_the_address_checked(app: Served) -> None:
    await app.create_user(OLD)
    token = await session(app, OLD)
    wrong = await ask(app, token, NEW, password="not the password at all")
    assert wrong.status_code == 403
    assert wrong.json()["error"]["code"] == "incorrect_password"
    bad = await ask(app, token, "not an address")
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "invalid_email"
    nobody = await app.client.post(CHANGE, json={"current_password": PASSWORD, "email": NEW})
    assert nobody.status_code == 401


async def test_the_pages_of_the_links_are_served(app: Served) -> None:
    for path in ("/change-email", "/undo-email-change"):
        page = await app.client.get(path)
        assert page.status_code == 200
        assert 'data-state="ready"' in page.text
