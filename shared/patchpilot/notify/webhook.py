"""Posting JSON to a webhook, with slack_sdk's `WebhookClient` for both Slack and Teams: it posts
with urllib (no extra dependency) and retries through its retry handlers, so no retry loop is
written here. 429 waits for Retry-After; 500, 502, 503 and 504 back off; a dropped connection is
tried again. Every webhook is paced: Slack takes 1 request per second, Teams about 4."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from slack_sdk.http_retry import (
    ConnectionErrorRetryHandler,
    HttpRequest,
    HttpResponse,
    RateLimitErrorRetryHandler,
    RetryHandler,
    RetryState,
)
from slack_sdk.http_retry.builtin_handlers import ServerErrorRetryHandler
from slack_sdk.webhook import WebhookClient

# WebhookClient logs the URL (a secret) at DEBUG and INFO ("Going to retry the same request: POST
# <url>"), and exception texts at ERROR. Its logger here is silenced below CRITICAL, whatever the
# root logger's level: the notifier logs each outcome itself, with the channel's name instead.
http_log = logging.getLogger("patchpilot.notify.http")
http_log.setLevel(logging.CRITICAL)
TIMEOUT_SECONDS = 10


class GatewayErrorRetryHandler(ServerErrorRetryHandler):
    """slack_sdk's server-error handler covers 500 and 503; gateways in front of Teams flows
    answer 502 and 504 too."""

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return response is not None and response.status_code in (500, 502, 503, 504)


def retry_handlers() -> list[RetryHandler]:
    return [
        ConnectionErrorRetryHandler(max_retry_count=1),
        RateLimitErrorRetryHandler(max_retry_count=3),
        GatewayErrorRetryHandler(max_retry_count=2),
    ]


@dataclass(frozen=True)
class Answer:
    status: int
    body: str


class Poster(Protocol):
    def __call__(self, url: str, payload: dict[str, Any]) -> Answer: ...


def post_json(url: str, payload: dict[str, Any]) -> Answer:
    """POST `payload` as JSON (retried as above); the last answer, or an exception when the
    connection could not be made."""
    client = WebhookClient(url, timeout=TIMEOUT_SECONDS, logger=http_log, retry_handlers=retry_handlers())
    response = client.send_dict(payload)
    return Answer(response.status_code, response.body or "")


class Pacer:
    """At most one post per `interval` to each webhook, within this process (a Lambda container
    or Functions worker sends its own notices; Slack tolerates short bursts and answers any
    excess with 429, which the retry handler honours)."""

    def __init__(
        self, monotonic: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self._monotonic = monotonic
        self._sleep = sleep
        self._last: dict[str, float] = {}  # by a digest of the URL: the map holds no secrets

    def wait(self, url: str, interval: float) -> None:
        key = hashlib.sha256(url.encode("utf-8")).hexdigest()
        now = self._monotonic()
        last = self._last.get(key)
        if last is not None and now - last < interval:
            self._sleep(interval - (now - last))
            now = self._monotonic()
        self._last[key] = now
