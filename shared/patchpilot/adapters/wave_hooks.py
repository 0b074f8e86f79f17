"""Wave hooks over HTTPS (the `WaveHooks` port; docs/traffic.md, "Wave hooks").

Before and after each wave, the policy's `hooks.before_wave` / `hooks.after_wave` endpoint gets a
POST whose JSON body names the run, the phase, the wave, its ring and machines:

    {"machines": ["i-1", ...], "phase": "before_wave", "ring": "prod", "run_id": "...",
     "sent_at": "2026-12-06T05:00:00+00:00", "wave": 2}

(compact, keys sorted; no secret in it), with two headers:

- `X-PatchPilot-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(key, f"{t}.{body}")>`, the key being
  the value of the secret the hook names (`secret:`, read through `Secrets.get`);
- `X-PatchPilot-Delivery: <command id>`: the same on every delivery of one call. A command may be
  delivered twice (the queues deliver at least once, a worker may die after the POST), so the
  receiver de-duplicates on it.

The answer: 2xx is ok, its body's first line the detail; any other status (a redirect too: none is
followed) is a refusal, "HTTP <status>: <first line>"; no answer (refused connection, TLS failure,
timeout) is `InProgress` again in 30 s, which the service turns into a failure at the hook's
`timeout`. The HTTP client is the standard library's urllib, as slack_sdk's `WebhookClient` used
by the notifier (notify/webhook.py) is; that client serialises the body itself (the bytes signed
must be the bytes sent) and follows redirects, so it is not used here. 10 s to connect and for each
read, far under a worker's time. The signature's `t` and `sent_at` are wall-clock time (the
receiver checks them against its own clock), while the retry is due on the runtime's clock (a
local run's is virtual). Neither the key nor the signature is logged or kept in a detail.

`verify_signature(key, header, body, now, tolerance)` is the receiver's check (and the tests').
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from http.client import HTTPException
from typing import IO
from urllib.parse import urlsplit

from patchpilot.engine.messages import CallWaveHook, Outcome
from patchpilot.ports import Clock, InProgress, Progress, Secrets, SecretUnavailableError
from patchpilot.redact import PROCESS_SECRETS, redact

log = logging.getLogger("patchpilot.wave_hooks")

SIGNATURE_HEADER = "X-PatchPilot-Signature"
DELIVERY_HEADER = "X-PatchPilot-Delivery"
TIMEOUT_SECONDS = 10.0  # to connect, and for each read
RETRY_AFTER = timedelta(seconds=30)  # no answer: try again then (until the hook's timeout)
DETAIL_CHARS = 200
MAX_ANSWER_BYTES = 64 * 1024  # of the answer's body, read for its first line
DEFAULT_TOLERANCE_SECONDS = 300  # how old (or how far ahead) a signature a receiver accepts


def sign(key: str | bytes, timestamp: int, body: bytes) -> str:
    """The `X-PatchPilot-Signature` value for `body` sent at `timestamp` (unix seconds)."""
    return f"t={timestamp},v1={_digest(key, timestamp, body)}"


def verify_signature(
    key: str | bytes, header: str, body: bytes, now: float, tolerance: float = DEFAULT_TOLERANCE_SECONDS
) -> bool:
    """True when `header` (an `X-PatchPilot-Signature` value) signs `body` with `key` and its
    time is within `tolerance` seconds of `now` (unix seconds). Several `v1=` entries are allowed
    (a key being rotated): one matching is enough. The receiver also de-duplicates on
    `X-PatchPilot-Delivery`, since one call may arrive twice."""
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1" and value:
            signatures.append(value)
    if timestamp is None or not signatures or abs(now - timestamp) > tolerance:
        return False
    expected = _digest(key, timestamp, body)
    return any(hmac.compare_digest(expected, signature) for signature in signatures)


def _digest(key: str | bytes, timestamp: int, body: bytes) -> str:
    secret = key.encode("utf-8") if isinstance(key, str) else key
    return hmac.new(secret, f"{timestamp}.".encode("ascii") + body, hashlib.sha256).hexdigest()


def body_of(command: CallWaveHook, sent_at: datetime) -> bytes:
    """The JSON body of a call: compact, keys sorted, UTF-8."""
    payload = {
        "run_id": command.run_id,
        "phase": command.phase,
        "wave": command.wave,
        "ring": command.ring,
        "machines": list(command.machines),
        "sent_at": sent_at.isoformat(timespec="seconds"),
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is the endpoint's answer, not a place to go (the signed body would follow it)."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class HttpsWaveHooks:
    """`WaveHooks` over HTTPS, signed with the named secret (see the module)."""

    def __init__(
        self,
        secrets: Secrets,
        clock: Clock,
        *,
        tls: ssl.SSLContext | None = None,
        timeout: float = TIMEOUT_SECONDS,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """`tls`: the certificates to trust (default: the system's); `wall`: unix time for the
        signature and `sent_at`."""
        self._secrets = secrets
        self._clock = clock
        self._tls = tls  # the system's is loaded on the first call: a cold start that calls no hook skips it
        self._timeout = timeout
        self._wall = wall

    def call(self, command: CallWaveHook) -> Progress:
        hook, phase = command.hook, command.phase
        if urlsplit(hook.url).scheme != "https":  # the policy allows none other; a stored run is checked again
            return self._answer(command, False, f"{phase} hook URL is not https: not called")
        try:
            key = self._secrets.get(hook.secret)
        except SecretUnavailableError as exc:
            return self._answer(command, False, f"secret {hook.secret!r} for the {phase} hook is unreadable: {exc}")
        PROCESS_SECRETS.add(key)  # never in a log line
        now = self._wall()
        timestamp = int(now)
        body = body_of(command, datetime.fromtimestamp(now, UTC))
        signature = sign(key, timestamp, body)
        request = urllib.request.Request(
            hook.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": "PatchPilot wave hook",
                SIGNATURE_HEADER: signature,
                DELIVERY_HEADER: command.id,
            },
        )
        hidden = (key, signature)
        if self._tls is None:
            self._tls = ssl.create_default_context()
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=self._tls), _NoRedirects)
        try:
            with opener.open(request, timeout=self._timeout) as response:
                status, text = response.status, _first_line(response)
        except urllib.error.HTTPError as exc:  # any status urllib does not count as success, 3xx too
            with exc:
                status, text = exc.code, _first_line(exc.fp)
        except (OSError, HTTPException) as exc:  # refused, reset, TLS, DNS, timed out (URLError is an OSError)
            why = redact(_reason(exc), whole=hidden)
            log.info("wave hook %s of run %s: no answer (%s)", phase, command.run_id, why)
            return InProgress(self._clock.now() + RETRY_AFTER, f"{phase} hook {_host(hook.url)}: {why}")
        line = redact(text, whole=hidden)
        if 200 <= status < 300:
            return self._answer(command, True, line or f"HTTP {status}")
        return self._answer(command, False, f"HTTP {status}: {line}" if line else f"HTTP {status}")

    def _answer(self, command: CallWaveHook, ok: bool, detail: str) -> list[Outcome]:
        log.info("wave hook %s of run %s: %s", command.phase, command.run_id, detail if ok else f"refused: {detail}")
        return [Outcome(id=command.phase, ok=ok, detail=detail[:DETAIL_CHARS], at=self._clock.now())]


def _first_line(stream: IO[bytes] | None) -> str:
    """The first non-empty line of an answer's body (its first 64 KiB), at most 200 characters."""
    if stream is None:
        return ""
    try:
        raw = stream.read(MAX_ANSWER_BYTES)
    except (OSError, HTTPException):
        return ""
    lines: Iterable[str] = raw.decode("utf-8", errors="replace").splitlines()
    return next((line.strip()[:DETAIL_CHARS] for line in lines if line.strip()), "")


def _reason(exc: BaseException) -> str:
    """What failed, in one line: a URLError's reason rather than its wrapper."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return "timed out"
    text = str(reason) or type(reason).__name__
    return " ".join(text.split())[:DETAIL_CHARS]


def _host(url: str) -> str:
    return urlsplit(url).netloc
