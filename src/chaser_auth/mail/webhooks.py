"""Posting webhook events to the application's endpoints, signed by the Standard Webhooks
scheme (https://www.standardwebhooks.com/, the `standardwebhooks` package).

Each attempt is a `POST` of the event's JSON with three headers: `webhook-id` (the outbox row's
id, the same on every attempt, for the receiver to drop duplicates), `webhook-timestamp` (the
attempt's time, in Unix seconds, from the wall clock: receivers refuse signatures more than
five minutes from their own time) and `webhook-signature` (`v1,` and the base64 HMAC-SHA256 of
`id.timestamp.body` under the endpoint's secret). A 2xx answer is delivery; any other answer,
a timeout or a connection error is a failure the worker retries (`DeliveryError`, never with
the endpoint's URL or answer in it). Redirects are not followed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from standardwebhooks import Webhook

from chaser_auth.mail.transport import DeliveryError


@dataclass(frozen=True)
class Endpoint:
    """A configured endpoint: its name, where it listens, its `whsec_` secret."""

    name: str
    url: str
    secret: str

    def __repr__(self) -> str:  # never the secret
        return f"Endpoint(name={self.name!r})"


class WebhookSender:
    def __init__(self, endpoints: Sequence[Endpoint], timeout: float) -> None:
        self._endpoints = {e.name: (e.url, Webhook(e.secret)) for e in endpoints}
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def knows(self, name: str) -> bool:
        return name in self._endpoints

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                follow_redirects=False,
                headers={"user-agent": "chaser-auth-webhooks"},
            )
        return self._client

    @staticmethod
    def message_id(row_id: object) -> str:
        return f"msg_{row_id}"

    def headers(self, name: str, message_id: str, body: bytes) -> dict[str, str]:
        """The Standard Webhooks headers of one attempt, signed now."""
        _, signer = self._endpoints[name]
        now = datetime.now(UTC)
        return {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signer.sign(message_id, now, body.decode("utf-8")),
        }

    async def post(self, name: str, message_id: str, body: bytes) -> None:
        """One attempt; DeliveryError unless the endpoint answered 2xx."""
        if name not in self._endpoints:
            raise DeliveryError("no_endpoint", permanent=True)
        url, _ = self._endpoints[name]
        try:
            answer = await self._http().post(
                url, content=body, headers=self.headers(name, message_id, body)
            )
        except httpx.TimeoutException:
            raise DeliveryError("webhook_timeout") from None
        except httpx.HTTPError as exc:
            raise DeliveryError(f"webhook_{type(exc).__name__}") from None
        if not 200 <= answer.status_code < 300:
            raise DeliveryError(f"webhook_http_{answer.status_code}")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
