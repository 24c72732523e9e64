"""Prometheus metrics (`GET /metrics`), through prometheus-client.

Counters and histograms live in the client's default registry. Under `serve --workers N` the
CLI points `PROMETHEUS_MULTIPROC_DIR` at a fresh folder, so every process writes its samples
there and whichever process answers a scrape reports the sum (the client's multiprocess mode).
The outbox figures are not counted but read from the database at scrape time, so every process
reports the same truth.

Labels never carry an address, a token or a raw path: `route` is the route's template
("/auth/sessions/{session_id}"), or "unmatched".
"""

from __future__ import annotations

import os
from datetime import datetime

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter(
    "chaser_auth_http_requests_total",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "chaser_auth_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template and method.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
MAIL = Counter(
    "chaser_auth_mail_total",
    "Outbox rows handled by the delivery worker, by kind (webhook:<endpoint> for webhook "
    "events) and outcome (sent, retried, dead, suppressed, stale, no_account, …).",
    ["kind", "outcome"],
)
LIMITED = Counter(
    "chaser_auth_rate_limited_total",
    "Requests or mails refused by a rate limit, by scope (ip, register-ip, login, "
    "password-change, address, code-address, mail-rate).",
    ["scope"],
)
TOKENS = Counter(
    "chaser_auth_tokens_total",
    "Link tokens by purpose (reset, verify, email-change, email-undo) and event (issued, "
    "consumed, expired, invalid, code_redeemed, code_refused).",
    ["purpose", "event"],
)


def render(outbox_depth: int, oldest_queued: datetime | None, dead: int, now: datetime) -> bytes:
    """The exposition text: the counters (summed over processes in multiprocess mode) and the
    outbox figures read by the caller."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        counted = CollectorRegistry()
        multiprocess.MultiProcessCollector(counted)  # type: ignore[no-untyped-call]
    else:
        counted = REGISTRY
    outbox = CollectorRegistry()
    Gauge("chaser_auth_outbox_depth", "Outbox rows waiting to be delivered.", registry=outbox).set(
        outbox_depth
    )
    Gauge(
        "chaser_auth_outbox_oldest_age_seconds",
        "Age of the oldest row waiting to be delivered (0 when none waits).",
        registry=outbox,
    ).set((now - oldest_queued).total_seconds() if oldest_queued else 0.0)
    Gauge(
        "chaser_auth_outbox_dead", "Dead letters (see `chaser-auth outbox list`).", registry=outbox
    ).set(dead)
    return generate_latest(counted) + generate_latest(outbox)
