"""Schemathesis fuzzing of the HTTP API, against the document it serves and the seed's.

What is fuzzed
  1. The OpenAPI document served at `/openapi.json` — every operation:
     - `test_served_api_with_a_session`: each case that needs `HTTPBearer` carries a valid
       session token, a new one per case (so `logout`, `end-session` or `change-password` cannot
       starve the cases after them);
     - `test_served_api_without_a_session`: the operations that need a session once more, with
       whatever Schemathesis makes of the security scheme itself (no header, or a made-up one);
     - `test_served_api_workflows`: Schemathesis's stateful workflows over the links it infers
       (`GET /auth/sessions` → `DELETE /auth/sessions/{session_id}`: ending real sessions).
     The schema is built at import from the app's own `openapi()` (Schemathesis's
     fixture-loaded schemas crash on pytest 9.2), and `test_the_fuzzed_document_is_the_served_one`
     checks it against the document fetched over the socket.
  2. The seed's own document (the ```yaml block of docs/seed/000_63cef650650d4c81.txt):
     `POST /auth/password-reset/request` only, sent to the same app (`test_seed_document`). The
     seed documents nothing but `200` + `MessageResponse`; a correct server must still refuse a
     body without `email`, so our documented errors (413, 422, 429 in the one error shape) and
     `requestBody.required` are added to the fuzzed copy of that operation
     (`seed_with_our_errors`); everything the seed does say is kept and checked.
  3. `test_a_body_that_cannot_be_decoded_is_a_documented_422`: fixed cases of what the
     fuzzer found (a body that is not UTF-8, or nested too deep), on every operation.

The app runs on a real socket via `tests.conftest.serve` (uvicorn, lifespan on, temp SQLite,
delivery worker off, every rate limit raised so that fuzzing does not just hit 429s), in an
event loop of its own thread, because Hypothesis drives these tests synchronously.
Schemathesis runs its examples, coverage (boundary values, missing fields, undeclared methods)
and fuzzing phases, with positive and negative data.

Checks: every built-in check in `CHECKS` (`EXCLUDED` says why the rest are left out), configured
rather than dropped where this API's documented design differs from a default
(`ACCEPTED_WHEN_VALID`, `REJECTED_WHEN_INVALID`), plus `one_error_shape` (every error body, on
any status, documented or not, is `{"error": {"code", "message", "details"}}`; never a 500) and,
with a session, `session_honoured` (a valid token is never answered 401). `max_response_time`
is not used: wall-clock limits make a shared CI machine flaky.

Budget: `max_examples` per operation for the random phase (`SERVED_EXAMPLES`,
`SEED_EXAMPLES`, `WORKFLOWS`), on top of the deterministic coverage cases; the module takes
about 20-30 s. `test_fuzzing_ran_enough_cases` prints the cases run per operation and fails
under `CASE_FLOOR`, so the fuzzing cannot silently shrink to nothing. No Hypothesis example
database is written (`database=None`), and Hypothesis's other caches go to the system's temp
dir (`HYPOTHESIS_HOME`), so the repository gets no `.hypothesis/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
import socket
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis.checks import (
    allow_header_conformance,
    content_type_conformance,
    ensure_resource_availability,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
    use_after_free,
)

from chaser_auth.app import create_app
from tests.conftest import PASSWORD, FakeClock, Served, make_settings, serve, socket_url

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "docs" / "seed" / "000_63cef650650d4c81.txt"

SERVED_EXAMPLES = 100  # random cases per operation and per test, besides the coverage cases
SEED_EXAMPLES = 400
WORKFLOWS = 30  # stateful scenarios, up to WORKFLOW_STEPS calls each
WORKFLOW_STEPS = 6
CASE_FLOOR = 1000  # fewer cases than this in all (of ~2500) and fuzzing has shrunk
UNLIMITED = "1000000/minute"
USER = "fuzz.owner@example.com"
# Hypothesis keeps caches (constants, Unicode tables) in `.hypothesis/` of the working
# directory even without an example database, and Schemathesis already draws its coverage cases
# while pytest collects this module: point it elsewhere from import on (reset after the module).
HYPOTHESIS_HOME = Path(tempfile.gettempdir()) / "chaser-auth-fuzz-hypothesis"
set_hypothesis_home_dir(HYPOTHESIS_HOME)
HYPOTHESIS: dict[str, Any] = {
    "deadline": None,
    "database": None,
    # The app is slow next to a pure function, and no input is filtered out on purpose.
    "suppress_health_check": list(HealthCheck),
}

# -- checks -------------------------------------------------------------------------------------


class ErrorShapeViolation(AssertionError):
    pass


def one_error_shape(ctx: Any, response: Any, case: Any) -> None:
    """Every 4xx/5xx — documented or not (404, 405…) — is JSON in the one shape; none is 500."""
    if response.status_code >= 500 and response.status_code != 503:
        raise ErrorShapeViolation(f"{response.status_code} for {case.operation.label}")
    if response.status_code < 400 or response.request.method == "HEAD":
        return
    content_type = (response.headers.get("content-type") or [""])[0]
    if not content_type.startswith("application/json"):
        raise ErrorShapeViolation(f"error with Content-Type {content_type!r}")
    try:
        body = response.json()
    except ValueError as exc:
        raise ErrorShapeViolation(f"error body is not JSON: {response.text[:200]!r}") from exc
    error = body.get("error") if isinstance(body, dict) else None
    if not (
        isinstance(body, dict)
        and set(body) == {"error"}
        and isinstance(error, dict)
        and set(error) == {"code", "message", "details"}
        and isinstance(error["code"], str)
        and isinstance(error["message"], str)
        and isinstance(error["details"], list)
    ):
        raise ErrorShapeViolation(f"not the one error shape: {body!r}")


ISSUED: set[str] = set()  # Authorization values of the sessions handed to cases


def session_honoured(ctx: Any, response: Any, case: Any) -> None:
    """A request that carried one of our fresh, valid tokens is never answered 401 (coverage
    cases that leave the header out on purpose do not carry it)."""
    sent = response.request.headers.get("Authorization")
    if sent in ISSUED and response.status_code == 401:
        raise AssertionError(f"401 with a valid session token: {response.text}")


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    missing_required_header,
    unsupported_method,
    allow_header_conformance,
    ignored_auth,
    # Both need a stateful scenario (they look back at earlier calls), so they only act in
    # `test_served_api_workflows`; elsewhere they pass trivially. This API has no read of a
    # single resource by id (after `DELETE /auth/sessions/{id}` nothing can GET that id) and no
    # POST that creates a resource at a child path, so they can only confirm the absence.
    use_after_free,
    ensure_resource_availability,
    one_error_shape,
]
EXCLUDED = {
    "object_level_authorization": (
        "needs several identities (Schemathesis's escalating WFC auth) and a GET that takes an "
        "object's id; here every read (`/auth/me`, `/auth/sessions`) takes no id and answers "
        "for the bearer's own account, and the only id-taking operation, DELETE "
        "/auth/sessions/{id}, answers another account's id like an unknown one (404) — that "
        "is tested in tests/api/test_account_sessions.py"
    ),
}

# Statuses a *schema-valid* request may still get, per operation (`positive_data_acceptance`):
# the documents type every field as a bare `string`, and the rules behind these answers cannot
# be written in JSON Schema — a token must be one we issued, a password must pass the policy
# and the breached-password list, an address must be an address. Each is a documented
# response of its operation. 401 on the session operations is the run without a session.
# 413: the 4 KiB body cap is documented (413) on every operation with a body, but no schema
# keyword bounds a whole body's size, so a valid body may exceed it.
ACCEPTED_WHEN_VALID: dict[str, list[str]] = {
    "request-password-reset": ["200", "413"],  # 200 for any string, by design (docs/api.md)
    "confirm-password-reset": ["200", "400", "413", "422"],  # 400 unknown token; 422 weak pw
    "verify-password-reset": ["200", "400", "413"],  # 400 unknown token
    "register": ["202", "413", "422"],  # 422 not an address, or a weak password
    "verify-email": ["200", "400", "413"],  # 400 unknown token
    "exchange-password-reset-code": ["200", "400", "413"],  # 400 no such code
    "verify-email-code": ["200", "400", "413"],  # 400 no such code
    "login": ["200", "401", "413"],  # 401 wrong email or password
    "me": ["200", "401"],
    "logout": ["204", "401"],
    "list-sessions": ["200", "401"],
    "end-session": ["204", "401", "404"],  # 404 an id that is none of this account's sessions
    "change-password": ["200", "401", "403", "413", "422"],  # 403 wrong current; 422 weak
    "resend-verification-email": ["202", "413"],  # 202 for any string, by design
    "change-email": ["202", "401", "403", "413", "422"],  # 403 wrong current; 422 not an address
    "confirm-email-change": ["200", "400", "413"],  # 400 unknown token
    "undo-email-change": ["200", "400", "413"],  # 400 unknown token
}
# `negative_data_rejection`: Schemathesis's default statuses, plus 413 (a negative body over
# 4 KiB is refused by the size cap before it is parsed: a rejection, and documented). 5xx is
# not among them: a 500 is never a rejection here (`not_a_server_error` fails it anyway).
REJECTED_WHEN_INVALID = [
    *("400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"),
]


def schemathesis_config() -> Any:
    return schemathesis.Config.from_dict(
        {
            "generation": {"mode": "all", "database": "none"},
            "checks": {
                "negative_data_rejection": {"expected-statuses": REJECTED_WHEN_INVALID},
                "positive_data_acceptance": {"expected-statuses": ["2xx"]},
            },
            "operations": [
                {
                    "include-operation-id": operation_id,
                    "checks": {"positive_data_acceptance": {"expected-statuses": statuses}},
                }
                for operation_id, statuses in ACCEPTED_WHEN_VALID.items()
            ],
        }
    )


# -- the documents ------------------------------------------------------------------------------


def served_document() -> dict[str, Any]:
    """The app's OpenAPI document, as `/openapi.json` serves it (minus `servers`, which holds
    the live app's address; cases are sent there with `base_url`)."""
    app = create_app(make_settings(Path("/nonexistent/fuzz-import")))  # nothing touches it
    document: dict[str, Any] = copy.deepcopy(app.openapi())
    document.pop("servers", None)
    return document


def seed_document() -> dict[str, Any]:
    text = SEED.read_text(encoding="utf-8")
    blocks = re.findall(r"^```yaml\n(.*?)^```", text, re.M | re.S)
    assert len(blocks) == 1, f"expected one ```yaml block in {SEED.name}, found {len(blocks)}"
    document: dict[str, Any] = yaml.safe_load(blocks[0])
    return document


def seed_with_our_errors(seed: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """The seed's document, plus what it leaves unsaid about its one operation.

    Its own responses and schemas are kept as they are. Added: our documented error answers
    (413, 422, 429, each with our description and `ErrorResponse` schema), and
    `requestBody.required: true` — the seed omits `required`, which in OpenAPI makes a POST
    with no body at all schema-valid; ours says `required: true`, and a body-less request
    (nothing names an address) is pinned to 422 by tests/api/test_reset_request.py."""
    document = copy.deepcopy(seed)
    (path,) = document["paths"]
    operation, served = document["paths"][path]["post"], ours["paths"][path]["post"]
    assert "required" not in operation["requestBody"], "the seed says it now: compare instead"
    assert served["requestBody"]["required"] is True
    operation["requestBody"]["required"] = True
    theirs, mine = operation["responses"], served["responses"]
    for status in ("413", "422", "429"):
        assert status not in theirs, f"the seed documents {status} now: compare, do not add"
        theirs[status] = copy.deepcopy(mine[status])
    schemas = document["components"]["schemas"]
    for name in ("ErrorResponse", "ErrorBody"):
        schemas[name] = copy.deepcopy(ours["components"]["schemas"][name])
    return document


SERVED_DOCUMENT = served_document()
SEED_DOCUMENT = seed_document()
PUBLIC = [
    operation["operationId"]
    for item in SERVED_DOCUMENT["paths"].values()
    for operation in item.values()
    if not operation.get("security")
]
WITH_BODY = [
    (path, method)
    for path, item in SERVED_DOCUMENT["paths"].items()
    for method, operation in item.items()
    if "requestBody" in operation
]
served_schema = schemathesis.openapi.from_dict(SERVED_DOCUMENT, config=schemathesis_config())
seed_schema = schemathesis.openapi.from_dict(
    seed_with_our_errors(SEED_DOCUMENT, SERVED_DOCUMENT), config=schemathesis_config()
)


def needs_session(case: Any) -> bool:
    return bool(case.operation.definition.raw.get("security"))


# -- the app on a real socket, in a thread of its own ------------------------------------------


class LiveApp:
    """`serve(...)` from conftest, run in an event loop thread of its own."""

    def __init__(self, tmp_path: Path) -> None:
        # proto=IPPROTO_TCP, unlike conftest's `bound_socket()`: asyncio turns Nagle off only
        # on sockets that say TCP, and with Nagle on, every request on a kept-alive connection
        # waits ~40 ms for a delayed ACK — fuzzing over it would take minutes.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.url = socket_url(self.sock)
        self.settings = make_settings(
            tmp_path,
            public_url=self.url,
            embedded_worker=False,
            rate_limit_reset_per_ip=UNLIMITED,
            rate_limit_reset_per_address=UNLIMITED,
            rate_limit_register_per_ip=UNLIMITED,
            rate_limit_resend_per_ip=UNLIMITED,
            rate_limit_resend_per_address=UNLIMITED,
            rate_limit_login=UNLIMITED,
            rate_limit_code_per_address=UNLIMITED,
        )
        self.loop = asyncio.new_event_loop()
        self.ready: Future[Served] = Future()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fuzz-app", daemon=True)
        self.http = requests.Session()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        finally:
            self.loop.close()

    async def _main(self) -> None:
        try:
            async with serve(self.settings, FakeClock(), None, self.sock) as served:
                self.ready.set_result(served)
                while not self.stop.is_set():
                    await asyncio.sleep(0.05)
        except BaseException as exc:
            if not self.ready.done():
                self.ready.set_exception(exc)
            raise

    def start(self) -> None:
        self.thread.start()
        served = self.ready.result(timeout=60)
        create = served.runtime.accounts.create(USER, PASSWORD)
        asyncio.run_coroutine_threadsafe(create, self.loop).result(timeout=60)

    def close(self) -> None:
        self.http.close()
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the app did not shut down"

    def session_headers(self) -> dict[str, str]:
        """A new session of the fuzzing account (logged in over HTTP) as request headers."""
        response = self.http.post(
            f"{self.url}/auth/login", json={"email": USER, "password": PASSWORD}, timeout=30
        )
        assert response.status_code == 200, response.text
        value = f"Bearer {response.json()['token']}"
        ISSUED.add(value)
        return {"Authorization": value}


@pytest.fixture(scope="module", autouse=True)
def hypothesis_home() -> Iterator[None]:
    """Undo `HYPOTHESIS_HOME` for the modules after this one."""
    yield
    set_hypothesis_home_dir(None)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    app = LiveApp(tmp_path_factory.mktemp("fuzz"))
    app.start()
    try:
        yield app
    finally:
        app.close()


# -- case counting ------------------------------------------------------------------------------

WITH_SESSION = "served, with a session"
WITHOUT_SESSION = "served, without a session"
WORKFLOW = "served, stateful"
SEED_DOC = "seed document"
FUZZ_TESTS = {
    "test_served_api_with_a_session": WITH_SESSION,
    "test_served_api_without_a_session": WITHOUT_SESSION,
    "test_served_api_workflows": WORKFLOW,
    "test_seed_document": SEED_DOC,
}
# Per document, when its fuzzing passed: about half of what the budget gives (~1350, ~570, ~200,
# ~420 cases with the budget above).
DOC_FLOOR = {
    WITH_SESSION: 600,
    WITHOUT_SESSION: 250,
    WORKFLOW: 80,
    SEED_DOC: SEED_EXAMPLES // 2,
}
CASES: Counter[tuple[str, str]] = Counter()
FAILED: set[str] = set()  # specs whose fuzzing stopped at a failure: their counts are short
STATUSES: dict[tuple[str, str], Counter[int]] = {}


@contextlib.contextmanager
def fuzzing(spec: str, case: Any) -> Iterator[list[Any]]:
    """Count the case and give the checks to run on it (with one that tallies the status);
    note the spec as failed if the case fails (Hypothesis then stops that test early)."""
    key = (spec, case.operation.label)
    CASES[key] += 1

    def tally(ctx: Any, response: Any, case: Any) -> None:
        STATUSES.setdefault(key, Counter())[response.status_code] += 1

    try:
        yield [tally, *CHECKS]
    except BaseException:
        FAILED.add(spec)
        raise


# -- the tests ----------------------------------------------------------------------------------


def test_the_fuzzed_document_is_the_served_one(live: LiveApp) -> None:
    response = live.http.get(f"{live.url}/openapi.json", timeout=30)
    assert response.status_code == 200
    served = response.json()
    assert served.pop("servers") == [{"url": live.url}]
    assert served == SERVED_DOCUMENT


@served_schema.parametrize()
@settings(max_examples=SERVED_EXAMPLES, **HYPOTHESIS)
def test_served_api_with_a_session(case: Any, live: LiveApp) -> None:
    with fuzzing(WITH_SESSION, case) as checks:
        if needs_session(case):
            case.call_and_validate(
                base_url=live.url,
                session=live.http,
                headers=live.session_headers(),
                checks=[*checks, session_honoured],
            )
        else:
            case.call_and_validate(base_url=live.url, session=live.http, checks=checks)


@served_schema.exclude(operation_id=PUBLIC).parametrize()
@settings(max_examples=SERVED_EXAMPLES, **HYPOTHESIS)
def test_served_api_without_a_session(case: Any, live: LiveApp) -> None:
    with fuzzing(WITHOUT_SESSION, case) as checks:
        case.call_and_validate(base_url=live.url, session=live.http, checks=checks)


def test_served_api_workflows(live: LiveApp) -> None:
    class Workflow(served_schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            kwargs: dict[str, Any] = {"base_url": live.url, "session": live.http}
            if needs_session(case):
                kwargs["headers"] = live.session_headers()
            return kwargs

        def validate_response(
            self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            with fuzzing(WORKFLOW, case) as checks:
                case.validate_response(
                    response,
                    checks=[*checks, session_honoured] if "headers" in kwargs else checks,
                    headers=kwargs.get("headers"),
                    transport_kwargs=kwargs,
                    recorder=self.recorder,  # what the stateful checks look back at
                )

    Workflow.run(
        settings=settings(max_examples=WORKFLOWS, stateful_step_count=WORKFLOW_STEPS, **HYPOTHESIS)
    )


@seed_schema.parametrize()
@settings(max_examples=SEED_EXAMPLES, **HYPOTHESIS)
def test_seed_document(case: Any, live: LiveApp) -> None:
    with fuzzing(SEED_DOC, case) as checks:
        case.call_and_validate(base_url=live.url, session=live.http, checks=checks)


UNDECODABLE = {
    "not UTF-8": b"\xff",  # JSON text is UTF-8 (RFC 8259 §8.1)
    "nested too deep": b"[" * 4000,  # Python's json gives up (RecursionError) under 4 KiB
}


@pytest.mark.parametrize("body", UNDECODABLE.values(), ids=UNDECODABLE.keys())
@pytest.mark.parametrize(("path", "method"), WITH_BODY, ids=[f"{m} {p}" for p, m in WITH_BODY])
def test_a_body_that_cannot_be_decoded_is_a_documented_422(
    live: LiveApp, path: str, method: str, body: bytes
) -> None:
    """Found by the fuzzer: `application/json` bytes that are not JSON at all. Documented on
    every operation as 422 `invalid_request` ("Body missing, not JSON, …"), like `b"not json"`
    in tests/api/test_reset_request.py — never an undocumented status."""
    operation = served_schema[path][method.upper()]
    headers = {"Content-Type": "application/json"}
    if operation.definition.raw.get("security"):
        headers.update(live.session_headers())
    response = live.http.request(
        method.upper(), f"{live.url}{path}", data=body, headers=headers, timeout=30
    )
    operation.Case().validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            one_error_shape,
        ],
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["details"]


def test_fuzzing_ran_enough_cases(request: pytest.FixtureRequest) -> None:
    """Last in the module: prints the cases run and fails if the fuzzing shrank to nothing."""
    selected = {item.name.partition("[")[0] for item in request.session.items}
    specs = [spec for test, spec in FUZZ_TESTS.items() if test in selected]
    if not specs:
        pytest.skip("no fuzz test was selected in this run")
    by_spec: Counter[str] = Counter()
    for (spec, _), n in CASES.items():
        by_spec[spec] += n
    width = max((len(label) for _, label in CASES), default=0)
    lines = []
    for (spec, label), n in sorted(CASES.items()):
        seen = sorted(STATUSES.get((spec, label), Counter()).items())
        answers = " ".join(f"{status}×{times}" for status, times in seen)
        lines.append(f"  {spec:<26} {label:<{width}} {n:5d}   {answers}")
    lines += [f"  {spec:<26} {'all operations':<{width}} {by_spec[spec]:5d}" for spec in specs]
    lines.append(f"  {'in all':<26} {'':<{width}} {sum(by_spec.values()):5d}")
    print("\nSchemathesis cases run:\n" + "\n".join(lines))  # noqa: T201

    # A spec whose fuzzing failed stopped at its first failure: its count says nothing (that
    # failure is reported by its own test).
    short = {s: by_spec[s] for s in specs if s not in FAILED and by_spec[s] < DOC_FLOOR[s]}
    assert not short, f"too few cases (floors {DOC_FLOOR}): {short}"
    if len(specs) == len(FUZZ_TESTS) and not FAILED:
        assert sum(by_spec.values()) >= CASE_FLOOR, f"{sum(by_spec.values())} < {CASE_FLOOR}"
