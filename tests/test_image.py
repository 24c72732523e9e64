"""The container image (`scripts/image` builds it as chaser-auth:latest), run as a user runs it.

The test starts the image with podman (or docker) on the host's network, against this run's
PostgreSQL database and Redis key prefix and an SMTP server in the test, and goes through the
reset flow over HTTP: an account made with `chaser-auth users create` inside the container, a
reset request, the mail with its link, the new password, a login with it. It also checks what
the image promises: not root, its health check, its entrypoint and default command.

Needs an engine and the built image; without them the test skips (fails under
CHASER_AUTH_TEST_STRICT=1, where `.ci/run` builds the image first).
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from chaser_auth.config import Settings
from tests.conftest import NEW_PASSWORD, PASSWORD, REDIS, TLS, Postgres, Smtp, free_port, require

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "chaser-auth:latest"
USER = "boxed@example.com"


def engine() -> str:
    found = shutil.which("podman") or shutil.which("docker")
    require(found, "neither podman nor docker is installed (scripts/image needs one)")
    assert found is not None
    return found


def run(
    *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass
class Container:
    engine: str
    name: str
    url: str

    def exec(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        interactive = ["-i"] if stdin is not None else []
        return run(self.engine, "exec", *interactive, self.name, *args, stdin=stdin)

    def logs(self) -> str:
        done = run(self.engine, "logs", self.name)
        return done.stdout + done.stderr

    def image_config(self) -> dict[str, object]:
        done = run(self.engine, "image", "inspect", IMAGE)
        assert done.returncode == 0, done.stderr
        found: list[dict[str, dict[str, object]]] = json.loads(done.stdout)
        return found[0]["Config"]


@pytest.fixture
def container(postgres: Postgres, smtp: Smtp) -> Iterator[Container]:
    tool = engine()
    require(
        run(tool, "image", "inspect", IMAGE).returncode == 0,
        f"no {IMAGE} image: build it with scripts/image",
    )
    port, operator = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    name = f"chaser-auth-test-{secrets.token_hex(4)}"
    prefix = f"chaser-test-{secrets.token_hex(6)}"
    with postgres.database() as database_url:
        settings = {
            "CHASER_AUTH_DATABASE_URL": database_url,
            "CHASER_AUTH_REDIS_URL": REDIS,
            "CHASER_AUTH_REDIS_KEY_PREFIX": prefix,
            "CHASER_AUTH_SMTP_URL": smtp.url,
            "CHASER_AUTH_PUBLIC_URL": url,
            "CHASER_AUTH_PORT": str(port),
            "CHASER_AUTH_OPERATOR_ADDRESS": f"127.0.0.1:{operator}",
            "CHASER_AUTH_WORKER_POLL_INTERVAL": "0.05",
        }
        environment = [arg for key, value in settings.items() for arg in ("-e", f"{key}={value}")]
        started = run(tool, "run", "-d", "--name", name, "--network", "host", *environment, IMAGE)
        assert started.returncode == 0, started.stderr
        box = Container(tool, name, url)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2, verify=TLS).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"the container never answered:\n{box.logs()}"
                time.sleep(0.2)
            yield box
        finally:
            run(tool, "rm", "--force", "--time", "10", name)


async def test_the_image_runs_the_reset_flow_on_postgres_and_redis(
    container: Container, smtp: Smtp
) -> None:
    config = container.image_config()
    assert config["Entrypoint"] == ["chaser-auth"]
    assert config["Cmd"] == ["serve"]
    uid = container.exec("id", "-u")
    assert uid.returncode == 0, uid.stderr
    assert uid.stdout.strip() not in ("", "0"), "the image runs as root"
    health = run(container.engine, "healthcheck", "run", container.name)
    if container.engine.endswith("podman"):  # docker runs it on its own schedule
        assert health.returncode == 0, health.stdout + health.stderr

    created = container.exec(
        "chaser-auth", "users", "create", USER, "--password-stdin", stdin=PASSWORD
    )
    assert created.returncode == 0, created.stderr

    async with httpx.AsyncClient(base_url=container.url, timeout=30) as client:
        asked = await client.post("/auth/password-reset/request", json={"email": USER})
        assert asked.status_code == 200, asked.text
        [mail] = await smtp.sink.wait_for(1, to=USER, timeout=30)
        link, token = mail.link()
        assert link.startswith(f"{container.url}/reset-password#token=")
        confirmed = await client.post(
            "/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD}
        )
        assert confirmed.status_code == 200, confirmed.text
        old = await client.post("/auth/login", json={"email": USER, "password": PASSWORD})
        new = await client.post("/auth/login", json={"email": USER, "password": NEW_PASSWORD})
    assert old.status_code == 401
    assert new.status_code == 200, new.text
    me = httpx.get(
        f"{container.url}/auth/me", headers={"Authorization": f"Bearer {new.json()['token']}"}
    )
    assert me.json()["email"] == USER
    # Everything it wrote went to PostgreSQL and the volume, none of it is personal in the log.
    assert USER not in container.logs()


def test_the_compose_file_runs_the_image_with_real_settings() -> None:
    """compose.yaml cannot be brought up here (its other images come from a registry), so what
    can drift is checked: the API and the worker run this image, with commands it has, and
    every CHASER_AUTH_* variable it sets is a setting."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"api", "worker", "postgres", "redis", "mail"} <= set(services)
    known = {f"CHASER_AUTH_{name.upper()}" for name in Settings.model_fields}
    for name, command in (("api", ["serve", "--no-worker"]), ("worker", ["worker"])):
        service = services[name]
        assert service["image"] == IMAGE
        assert service["command"] == command
        assert set(service["environment"]) <= known, set(service["environment"]) - known
        assert service["environment"]["CHASER_AUTH_SMTP_URL"] == "smtp://mail:1025"
    assert services["api"]["ports"] == ["8000:8000"]
