"""Observability: the Prometheus counters and gauges of `GET /metrics` on the operator listener
(and its absence from the public one), the JSON log lines of `chaser-auth serve`, and the audit
trail read and purged through `chaser-auth audit`.

prometheus-client keeps its counters in one process-global registry, so within a pytest run
they carry what earlier tests counted: the metrics test compares a scrape taken before its
scenario with one taken after, and asserts the differences.

The other two tests run the real command (`tests.test_cli`'s helpers): the logs are the
service's stdout, and the audit trail lives in the SQLite file under `tmp_path/state`.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    NEW_PASSWORD,
    PASSWORD,
    TLS,
    FakeClock,
    Served,
    Smtp,
    make_settings,
    serve,
)
from tests.test_cli import (
    cli,
    create_user,
    mail_to,
    operator_env,
    poll,
    running,
    serving,
    tmp_env,
)

# (sample name, sorted label pairs) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

RESET_KIND = "password_reset_request"
CHANGED_KIND = "password_changed"
VERIFY_LINK = re.compile(r"/verify-email#token=([A-Za-z0-9_-]{43,})")
RESET_LINK = re.compile(r"/reset-password#token=([A-Za-z0-9_-]{43,})")


# -- metrics ------------------------------------------------------------------------------------


def parse_metrics(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def scrape(served: Served) -> Samples:
    assert served.operator is not None, "the operator listener is off"
    response = await served.operator.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse_metrics(response.text)


def changes(before: Samples, after: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every series of the sample `name` whose value moved between the scrapes, by labels."""
    moved = {}
    for (sample, labels), value in after.items():
        if sample != name:
            continue
        diff = value - before.get((sample, labels), 0.0)
        if diff:
            moved[labels] = diff
    return moved


def series(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def gauge(samples: Samples, name: str) -> float:
    return samples[(name, ())]


async def test_metrics_count_a_scripted_scenario(
    tmp_path: Path, clock: FakeClock, smtp: Smtp
) -> None:
    settings = make_settings(
        tmp_path,
        smtp_url=smtp.url,
        rate_limit_reset_per_ip="4/minute",
        rate_limit_reset_per_address="1/hour",
        rate_limit_login="2/minute",
    )
    alice, bob, nobody = "Alice.Metrics@Example.com", "bob.metrics@example.com", "ghost@example.com"
    unknown_id = str(uuid.uuid4())
    unknown_path = f"/auth/accounts/{unknown_id}/profile"
    async with serve(settings, clock, smtp) as app:
        before = await scrape(app)
        await app.create_user(alice)
        await app.create_user(bob)

        # Four reset requests use up the per-IP budget of 4/minute; the fifth is refused.
        for address in (alice, alice, nobody, bob):
            assert (await app.request_reset(address)).status_code == 200
        refused = await app.request_reset(alice)
        assert refused.status_code == 429
        assert refused.headers["X-RateLimit-Scope"] == "ip"
        await app.settle()
        # Alice: one link, the second request suppressed (1/hour per address); Bob: one link.
        [alice_mail] = await smtp.sink.wait_for(1, to=alice)
        [bob_mail] = await smtp.sink.wait_for(1, to=bob)
        _, alice_token = alice_mail.link()
        _, bob_token = bob_mail.link()

        confirm = {"token": alice_token, "password": NEW_PASSWORD}
        used = await app.client.post("/auth/password-reset/confirm", json=confirm)
        assert used.status_code == 200, used.text
        again = await app.client.post("/auth/password-reset/confirm", json=confirm)
        assert again.status_code == 400

        await app.settle()  # the password-changed notice recorded before the clock jumps
        clock.advance(settings.reset_token_ttl + 1)
        late = await app.client.post(
            "/auth/password-reset/confirm", json={"token": bob_token, "password": NEW_PASSWORD}
        )
        assert late.status_code == 400

        wrong = {"email": alice, "password": "not the password at all, sorry"}
        statuses = [(await app.client.post("/auth/login", json=wrong)).status_code for _ in "abc"]
        assert statuses == [401, 401, 429]

        assert (await app.client.get(unknown_path)).status_code == 404
        await app.settle()  # the password-changed notice after Alice's reset
        await smtp.sink.wait_for(2, to=alice)
        after = await scrape(app)
        assert app.operator is not None
        text = (await app.operator.get("/metrics")).text

    reset_route, confirm_route = "/auth/password-reset/request", "/auth/password-reset/confirm"
    assert changes(before, after, "chaser_auth_http_requests_total") == {
        series(route="/metrics", method="GET", status="200"): 1,  # the first scrape
        series(route=reset_route, method="POST", status="200"): 4,
        series(route=reset_route, method="POST", status="429"): 1,
        series(route=confirm_route, method="POST", status="200"): 1,
        series(route=confirm_route, method="POST", status="400"): 2,
        series(route="/auth/login", method="POST", status="401"): 2,
        series(route="/auth/login", method="POST", status="429"): 1,
        series(route="unmatched", method="GET", status="404"): 1,
    }
    assert changes(before, after, "chaser_auth_http_request_duration_seconds_count") == {
        series(route="/metrics", method="GET"): 1,
        series(route=reset_route, method="POST"): 5,
        series(route=confirm_route, method="POST"): 3,
        series(route="/auth/login", method="POST"): 3,
        series(route="unmatched", method="GET"): 1,
    }
    assert changes(before, after, "chaser_auth_mail_total") == {
        series(kind=RESET_KIND, outcome="sent"): 2,
        series(kind=RESET_KIND, outcome="suppressed"): 1,
        series(kind=RESET_KIND, outcome="no_account"): 1,
        series(kind=CHANGED_KIND, outcome="sent"): 1,
    }
    assert changes(before, after, "chaser_auth_rate_limited_total") == {
        series(scope="ip"): 1,
        series(scope="address"): 1,
        series(scope="login"): 1,
    }
    assert changes(before, after, "chaser_auth_tokens_total") == {
        series(purpose="reset", event="issued"): 2,
        series(purpose="reset", event="consumed"): 1,
        series(purpose="reset", event="invalid"): 1,
        series(purpose="reset", event="expired"): 1,
    }
    assert gauge(after, "chaser_auth_outbox_depth") == 0
    assert gauge(after, "chaser_auth_outbox_oldest_age_seconds") == 0
    assert gauge(after, "chaser_auth_outbox_dead") == 0

    forbidden = [
        alice.lower(),
        bob.lower(),
        nobody,
        "alice.metrics",
        "bob.metrics",
        "ghost",
        alice_token,
        bob_token,
        unknown_id,
        unknown_path,
    ]
    label_values = {value for _, labels in parse_metrics(text) for _, value in labels}
    assert label_values, "no labelled series at all"
    for value in label_values:
        assert "@" not in value, value
        for secret in forbidden:
            assert secret not in value.lower(), (secret, value)


# -- the operator listener ----------------------------------------------------------------------


def listening_ports() -> set[int]:
    """The TCP ports this process listens on (IPv4 and IPv6), as the kernel reports them."""
    ours = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # the directory's own descriptor is gone by now
            target = str(fd.readlink())
            if target.startswith("socket:["):
                ours.add(target.removeprefix("socket:[").removesuffix("]"))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in ours:  # 0A: LISTEN
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


async def test_metrics_are_served_on_the_operator_listener_and_are_a_404_on_the_public_one(
    tmp_path: Path, clock: FakeClock
) -> None:
    before = listening_ports()
    async with serve(make_settings(tmp_path), clock, None) as app:
        assert app.operator is not None
        operator = urlsplit(str(app.operator.base_url))
        assert operator.hostname == "127.0.0.1"  # loopback, as by default
        assert listening_ports() - before == {urlsplit(app.url).port, operator.port}

        public = await app.client.get("/metrics")
        unknown = await app.client.get("/no-such-path")
        assert public.status_code == unknown.status_code == 404
        assert public.json() == unknown.json()  # the one shape, nothing that says "elsewhere"
        assert public.json()["error"]["code"] == "not_found"
        assert "/metrics" not in (await app.client.get("/openapi.json")).json()["paths"]

        scraped = await app.operator.get("/metrics")
        assert scraped.status_code == 200, scraped.text
        assert scraped.headers["content-type"].startswith("text/plain")
        assert "chaser_auth_outbox_depth 0.0" in scraped.text
        assert scraped.headers["cache-control"] == "no-store"  # the edge headers, here too
        assert scraped.headers["x-request-id"]
        for path, status in (("/healthz", "ok"), ("/readyz", "ready")):
            for client in (app.client, app.operator):  # load balancers keep the public ones
                answer = await client.get(path)
                assert answer.status_code == 200, (client.base_url, path)
                assert answer.json() == {"status": status}

        # Nothing else: no API, no document, no docs; errors in the one shape.
        for method, path in (
            ("POST", "/auth/password-reset/request"),
            ("GET", "/openapi.json"),
            ("GET", "/docs"),
            ("GET", "/static/chaser-auth.css"),
        ):
            answer = await app.operator.request(method, path, json={"email": "a@example.com"})
            assert answer.status_code == 404, (method, path)
            assert answer.json() == unknown.json()
        wrong_method = await app.operator.post("/metrics")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert operator.port not in listening_ports()  # stopped with the app


async def test_an_empty_operator_address_binds_nothing(tmp_path: Path, clock: FakeClock) -> None:
    before = listening_ports()
    async with serve(make_settings(tmp_path, operator_address=""), clock, None) as app:
        assert app.operator is None
        assert listening_ports() - before == {urlsplit(app.url).port}
        assert (await app.client.get("/metrics")).status_code == 404
        assert (await app.client.get("/readyz")).status_code == 200


def test_a_standalone_worker_serves_its_own_metrics_and_health(tmp_path: Path, smtp: Smtp) -> None:
    """The scale-out topology (docs/deployment.md): `serve --no-worker` takes the request, a
    `chaser-auth worker` process sends the mail — and the worker's operator listener is where
    the mail and token counters show. Both are real processes; the worker is scraped over
    HTTP."""
    env = tmp_env(tmp_path, CHASER_AUTH_SMTP_URL=smtp.url)
    worker_address, worker_url = operator_env()
    create_user("ivan@example.com", cwd=tmp_path, env=env)
    with (
        serving(tmp_path, env, "--no-worker") as api,
        running(
            "worker",
            cwd=tmp_path,
            env={**env, **worker_address},
            name="worker",
            stopped="delivery worker stopped",
        ) as worker,
    ):

        def healthy() -> bool:
            worker.assert_alive()
            try:
                return httpx.get(f"{worker_url}/healthz", timeout=1, verify=TLS).status_code == 200
            except httpx.TransportError:
                return False

        poll(healthy, "the worker's operator listener to answer /healthz")
        assert httpx.get(f"{worker_url}/readyz", timeout=5).json() == {"status": "ready"}
        reset = "chaser_auth_mail_total"
        before = parse_metrics(httpx.get(f"{worker_url}/metrics", timeout=5).text)
        assert post(api, "/auth/password-reset/request", {"email": "ivan@example.com"}).is_success
        mail_to(smtp, "ivan@example.com")

        def counted() -> Samples | None:
            after = parse_metrics(httpx.get(f"{worker_url}/metrics", timeout=5).text)
            sent = series(kind=RESET_KIND, outcome="sent")
            return after if changes(before, after, reset).get(sent) == 1 else None

        after = poll(counted, "the worker's /metrics to count the sent mail")
        issued = changes(before, after, "chaser_auth_tokens_total")
        assert issued == {series(purpose="reset", event="issued"): 1}
        assert gauge(after, "chaser_auth_outbox_depth") == 0
        # The worker's listener has no admin API and no document: that is `serve`'s.
        for path in ("/admin/accounts", "/admin/openapi.json", "/openapi.json"):
            answer = httpx.get(f"{worker_url}{path}", timeout=5)
            assert answer.status_code == 404, path
            assert answer.json()["error"]["code"] == "not_found"
        assert "operator listener on" in worker.log()
    with pytest.raises(httpx.TransportError):  # stopped with the worker
        httpx.get(f"{worker_url}/healthz", timeout=1)


def test_a_worker_whose_operator_address_is_taken_exits_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        done = cli(
            "worker", cwd=tmp_path, env=tmp_env(tmp_path, CHASER_AUTH_OPERATOR_ADDRESS=taken)
        )
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.splitlines()[-1] == (
        f"chaser-auth: cannot listen on {taken} (CHASER_AUTH_OPERATOR_ADDRESS): "
        "Address already in use"
    )


# -- JSON logs ----------------------------------------------------------------------------------


def post(url: str, path: str, body: dict[str, Any], token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{url}{path}", json=body, headers=headers, timeout=30)


def test_json_logs_of_a_full_scenario_hold_no_personal_data(tmp_path: Path, smtp: Smtp) -> None:
    address, unknown = "Logged.Person@Example.org", "Nobody.Here@Example.net"
    third_password = "yet another passphrase for the logs 3"
    env = tmp_env(tmp_path, CHASER_AUTH_SMTP_URL=smtp.url, CHASER_AUTH_LOG_LEVEL="DEBUG")
    tokens: list[str] = []
    with serving(tmp_path, env) as url:
        registered = post(url, "/auth/register", {"email": address, "password": PASSWORD})
        assert registered.status_code == 202, registered.text
        [welcome] = mail_to(smtp, address)
        found = VERIFY_LINK.search(welcome.text())
        assert found, welcome.text()
        tokens.append(found.group(1))
        verified = post(url, "/auth/verify-email", {"token": found.group(1)})
        assert verified.status_code == 200, verified.text
        tokens.append(verified.json()["token"])

        login = post(url, "/auth/login", {"email": address, "password": PASSWORD})
        assert login.status_code == 200, login.text
        session = login.json()["token"]
        tokens.append(session)
        listed = httpx.get(
            f"{url}/auth/sessions", headers={"Authorization": f"Bearer {session}"}, timeout=30
        )
        assert listed.status_code == 200, listed.text
        changed = post(
            url,
            "/auth/password/change",
            {"current_password": PASSWORD, "password": NEW_PASSWORD},
            session,
        )
        assert changed.status_code == 200, changed.text
        tokens.append(changed.json()["token"])

        for who in (address, unknown):
            assert post(url, "/auth/password-reset/request", {"email": who}).status_code == 200

        def reset_token() -> str | None:
            for message in smtp.sink.to(address):
                if hit := RESET_LINK.search(message.text()):
                    return hit.group(1)
            return None

        token = poll(reset_token, "the reset email")
        tokens.append(token)
        confirmed = post(
            url, "/auth/password-reset/confirm", {"token": token, "password": third_password}
        )
        assert confirmed.status_code == 200, confirmed.text
        tokens.append(confirmed.json()["token"])

        again = post(url, "/auth/login", {"email": address, "password": third_password})
        assert again.status_code == 200, again.text
        tokens.append(again.json()["token"])
        assert post(url, "/auth/logout", {}, again.json()["token"]).status_code == 204

        tagged = httpx.get(f"{url}/healthz", headers={"X-Request-ID": "test-req-1"}, timeout=30)
        assert tagged.headers["X-Request-ID"] == "test-req-1"
        mail_to(smtp, address, 4)  # verify, changed, reset, changed: the worker is done

    lines = [line for line in (tmp_path / "serve.log").read_text().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        records.append(record)
    assert any(r["logger"].startswith("uvicorn") for r in records), "no uvicorn line"
    assert any("Application startup complete" in r["message"] for r in records)

    [access] = [
        r
        for r in records
        if r["logger"] == "chaser_auth.access" and r.get("request_id") == "test-req-1"
    ]
    assert access["method"] == "GET"
    assert access["path"] == "/healthz"
    assert access["status"] == 200
    assert isinstance(access["duration_ms"], int | float)

    text = "\n".join(lines).lower()
    for secret in [
        address,
        unknown,
        address.partition("@")[0],
        unknown.partition("@")[0],
        *tokens,
        PASSWORD,
        NEW_PASSWORD,
        third_password,
    ]:
        assert secret.lower() not in text, f"the log holds {secret!r}"


# -- audit trail --------------------------------------------------------------------------------


def audit(tmp_path: Path, env: dict[str, str], *args: str) -> list[list[str]]:
    """`chaser-auth audit ARGS`: the rows, split into at, event, user, subject[, detail]."""
    done = cli("audit", *args, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.splitlines()
    assert header.split() == ["at", "event", "user", "subject", "detail"]
    return [line.split(None, 4) for line in lines]


def insert_old_event(db: Path, days: int, user_id: str) -> int:
    at = (datetime.now(UTC) - timedelta(days=days)).replace(tzinfo=None)
    with sqlite3.connect(db) as connection:
        cursor = connection.execute(
            "INSERT INTO audit_events (at, event, user_id, subject, detail) "
            "VALUES (?, 'ancient_event', ?, NULL, NULL)",
            (at.strftime("%Y-%m-%d %H:%M:%S.%f"), uuid.UUID(user_id).hex),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid


def audit_ids(db: Path) -> set[int]:
    with sqlite3.connect(db) as connection:
        return {row[0] for row in connection.execute("SELECT id FROM audit_events")}


def test_audit_cli_reads_and_purges_the_trail(tmp_path: Path, smtp: Smtp) -> None:
    address = "Audited.Person@Example.com"
    env = tmp_env(tmp_path, CHASER_AUTH_SMTP_URL=smtp.url)
    db = tmp_path / "state" / "auth.db"
    user_id = create_user(address, cwd=tmp_path, env=env)
    with serving(tmp_path, env) as url:
        assert post(url, "/auth/password-reset/request", {"email": address}).status_code == 200
        [message] = mail_to(smtp, address)
        _, token = message.link()
        confirmed = post(
            url, "/auth/password-reset/confirm", {"token": token, "password": NEW_PASSWORD}
        )
        assert confirmed.status_code == 200, confirmed.text
        bogus = post(
            url, "/auth/password-reset/confirm", {"token": "A" * 43, "password": NEW_PASSWORD}
        )
        assert bogus.status_code == 400
        mail_to(smtp, address, 2)  # the password-changed notice
        poll(
            lambda: len(audit(tmp_path, env, "--event", "mail_sent")) == 2,
            "both mail_sent events",
        )

    rows = audit(tmp_path, env)
    events = [row[1] for row in rows]
    for wanted in (
        "account_created",
        "reset_requested",
        "reset_token_issued",
        "mail_sent",
        "password_reset_completed",
        "reset_confirm_failed",
    ):
        assert wanted in events, (wanted, events)
    for row in rows:
        assert "@" not in row[3] and "audited" not in row[3].lower(), row
    [requested] = [row for row in rows if row[1] == "reset_requested"]
    assert requested[2] == user_id
    assert re.fullmatch(r"[0-9a-f]{16}", requested[3]), requested  # a keyed hash, cut to 16
    [completed] = [row for row in rows if row[1] == "password_reset_completed"]
    assert json.loads(completed[4]) == {"sessions_revoked": 0}
    listing = cli("audit", cwd=tmp_path, env=env).stdout
    assert "audited" not in listing.lower()

    only = audit(tmp_path, env, "--event", "reset_requested")
    assert [row[1] for row in only] == ["reset_requested"]
    mine = audit(tmp_path, env, "--user", user_id)
    assert mine and all(row[2] == user_id for row in mine)
    assert len(mine) == sum(row[2] == user_id for row in rows) < len(rows)  # the bogus confirm
    assert audit(tmp_path, env, "--since", "1h") == rows
    assert audit(tmp_path, env, "--since", "1h", "--limit", "1") == rows[-1:]

    bad = cli("audit", "--since", "5x", cwd=tmp_path, env=env)
    assert bad.returncode == 2
    assert "usage:" in bad.stderr
    assert "use a number and a unit" in bad.stderr

    # Retention: 90 days by default, so an account's event from 200 days ago goes and the
    # rest stay.
    recent = audit_ids(db)
    insert_old_event(db, days=200, user_id=user_id)
    purged = cli("audit", "purge", cwd=tmp_path, env=env)
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout == "purged 1 event\n"
    assert audit_ids(db) == recent

    older = insert_old_event(db, days=200, user_id=user_id)
    kept = cli(
        "audit", "purge", cwd=tmp_path, env=env | {"CHASER_AUTH_AUDIT_RETENTION_DAYS": "1000"}
    )
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout == "purged 0 events\n"
    assert audit_ids(db) == recent | {older}
