"""Wave hooks over HTTPS: a real TLS server on 127.0.0.1 (certificate from a throwaway CA made by
`trustme`) receives the signed POST and answers as a test scripts it."""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from clocks import ManualClock
from webhook_server import serving

from patchpilot.adapters.wave_hooks import (
    DELIVERY_HEADER,
    RETRY_AFTER,
    SIGNATURE_HEADER,
    HttpsWaveHooks,
    sign,
    verify_signature,
)
from patchpilot.engine.messages import CallWaveHook, Outcome
from patchpilot.local_runtime import LocalRuntime
from patchpilot.notify import EnvironmentSecrets
from patchpilot.policy.model import WaveHook
from patchpilot.ports import InProgress, Progress, SecretUnavailableError

T0 = datetime(2025, 1, 14, 22, 0, tzinfo=UTC)  # the run's clock (virtual locally)
WALL = 1_765_000_000.0  # unix seconds: the wall clock the signature uses
KEY = "k3y-0f-the-wave-hook-1234567890"
SECRET_NAME = "patchpilot-wave-hook"


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # by lower-case name: names are case-insensitive (urllib sends `X-patchpilot-signature`)
    body: bytes

    def header(self, name: str) -> str:
        return self.headers[name.lower()]


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: str = "ok"
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0  # seconds before answering


@dataclass
class Endpoint:
    server: ThreadingHTTPServer
    reply: Reply = Reply()
    received: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)  # ends a delayed answer early

    def url(self, path: str = "/hooks/patch") -> str:
        host, port = self.server.server_address[:2]
        return f"https://{host!s}:{port}{path}"


def _handler(endpoint: Endpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            endpoint.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            reply = endpoint.reply
            if reply.delay:
                endpoint.release.wait(reply.delay)
            data = reply.body.encode("utf-8")
            self.send_response(reply.status)
            for name, value in reply.headers:
                self.send_header(name, value)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def endpoint(ca: trustme.CA) -> Iterator[Endpoint]:
    def make(server: ThreadingHTTPServer) -> Endpoint:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        return Endpoint(server)

    with serving(make, _handler) as owner:
        yield owner
        owner.release.set()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


def hooks(ca: trustme.CA, clock: ManualClock, secrets: Any = None, **options: Any) -> HttpsWaveHooks:
    tls = ssl.create_default_context()
    ca.configure_trust(tls)
    store = secrets if secrets is not None else EnvironmentSecrets({SECRET_NAME: KEY})
    return HttpsWaveHooks(store, clock, tls=tls, wall=lambda: WALL, **options)


def command(url: str, phase: str = "before_wave", command_id: str = "run-1:w2:before_wave") -> CallWaveHook:
    return CallWaveHook(
        id=command_id,
        run_id="run-1",
        wave=2,
        phase=phase,  # type: ignore[arg-type]
        hook=WaveHook(url=url, secret=SECRET_NAME),
        ring="production",
        machines=["i-0a1", "i-0b2"],
        issued_at=T0,
    )


def one(progress: Progress) -> Outcome:
    assert isinstance(progress, list), progress
    (outcome,) = progress
    return outcome


# --- the request ----------------------------------------------------------------------------------


def test_the_body_names_the_run_wave_ring_and_machines_and_holds_no_secret(
    ca: trustme.CA, clock: ManualClock, endpoint: Endpoint
) -> None:
    hooks(ca, clock).call(command(endpoint.url()))

    (request,) = endpoint.received
    assert request.path == "/hooks/patch"
    assert json.loads(request.body) == {
        "run_id": "run-1",
        "phase": "before_wave",
        "wave": 2,
        "ring": "production",
        "machines": ["i-0a1", "i-0b2"],
        "sent_at": datetime.fromtimestamp(WALL, UTC).isoformat(),
    }
    assert request.header("Content-Type").startswith("application/json")
    assert KEY not in request.body.decode() and SECRET_NAME not in request.body.decode()


def test_the_signature_verifies_with_the_secrets_value_over_the_bytes_sent(
    ca: trustme.CA, clock: ManualClock, endpoint: Endpoint
) -> None:
    hooks(ca, clock).call(command(endpoint.url()))

    (request,) = endpoint.received
    header = request.header(SIGNATURE_HEADER)
    assert header.startswith(f"t={int(WALL)},v1=")
    assert verify_signature(KEY, header, request.body, now=WALL + 5)
    assert not verify_signature("another key", header, request.body, now=WALL + 5)
    assert not verify_signature(KEY, header, request.body.replace(b"i-0a1", b"i-0a9"), now=WALL + 5)


def test_the_delivery_header_is_the_command_id_on_every_delivery(
    ca: trustme.CA, clock: ManualClock, endpoint: Endpoint
) -> None:
    wave_hooks = hooks(ca, clock)
    wave_hooks.call(command(endpoint.url()))
    wave_hooks.call(command(endpoint.url()))  # the queue delivered the command twice

    assert [r.header(DELIVERY_HEADER) for r in endpoint.received] == ["run-1:w2:before_wave"] * 2


# --- the answer -----------------------------------------------------------------------------------


def test_a_2xx_answer_is_ok_with_the_first_line_of_its_body(
    ca: trustme.CA, clock: ManualClock, endpoint: Endpoint
) -> None:
    endpoint.reply = Reply(202, "\n  traffic shifted to eu-west  \nsecond line")

    outcome = one(hooks(ca, clock).call(command(endpoint.url(), phase="after_wave")))

    assert (outcome.id, outcome.ok, outcome.detail) == ("after_wave", True, "traffic shifted to eu-west")


def test_a_2xx_answer_without_a_body_says_its_status(ca: trustme.CA, clock: ManualClock, endpoint: Endpoint) -> None:
    endpoint.reply = Reply(204, "")

    assert one(hooks(ca, clock).call(command(endpoint.url()))).detail == "HTTP 204"


def test_a_long_first_line_is_cut_to_200_characters(ca: trustme.CA, clock: ManualClock, endpoint: Endpoint) -> None:
    endpoint.reply = Reply(200, "x" * 5000)

    assert len(one(hooks(ca, clock).call(command(endpoint.url()))).detail) == 200


def test_a_4xx_refuses_with_the_status_and_the_endpoints_answer(
    ca: trustme.CA, clock: ManualClock, endpoint: Endpoint
) -> None:
    endpoint.reply = Reply(409, "change freeze until 2025-01-20: no patching\n(ticket CHG-1)")

    outcome = one(hooks(ca, clock).call(command(endpoint.url())))

    assert not outcome.ok
    assert outcome.detail == "HTTP 409: change freeze until 2025-01-20: no patching"
    assert len(endpoint.received) == 1


def test_a_5xx_refuses_and_is_not_retried_within_the_call(
    ca: trustme.CA, clock: ManualClock, endpoint: Endpoint
) -> None:
    endpoint.reply = Reply(503, "upstream unavailable")

    outcome = one(hooks(ca, clock).call(command(endpoint.url())))

    assert (outcome.ok, outcome.detail) == (False, "HTTP 503: upstream unavailable")
    assert len(endpoint.received) == 1


def test_a_redirect_is_not_followed(ca: trustme.CA, clock: ManualClock, endpoint: Endpoint) -> None:
    endpoint.reply = Reply(307, "moved", headers=(("Location", endpoint.url("/elsewhere")),))

    outcome = one(hooks(ca, clock).call(command(endpoint.url())))

    assert (outcome.ok, outcome.detail) == (False, "HTTP 307: moved")
    assert [r.path for r in endpoint.received] == ["/hooks/patch"]


def test_an_answer_echoing_the_signature_keeps_it_out_of_the_detail(
    ca: trustme.CA, clock: ManualClock, endpoint: Endpoint
) -> None:
    wave_hooks = hooks(ca, clock)
    wave_hooks.call(command(endpoint.url()))  # the same call again signs the same bytes at the same time
    sent = endpoint.received[0].header(SIGNATURE_HEADER)
    endpoint.reply = Reply(401, f"bad signature {sent} for key {KEY}")

    outcome = one(wave_hooks.call(command(endpoint.url())))

    assert outcome.detail.startswith("HTTP 401: bad signature")
    assert endpoint.received[1].header(SIGNATURE_HEADER) == sent
    assert sent.split("v1=")[1] not in outcome.detail and KEY not in outcome.detail


# --- no answer ------------------------------------------------------------------------------------


def test_no_answer_within_the_timeout_is_in_progress_for_another_try_in_30_seconds(
    ca: trustme.CA, clock: ManualClock, endpoint: Endpoint
) -> None:
    endpoint.reply = Reply(200, "late", delay=5)
    started = time.monotonic()

    progress = hooks(ca, clock, timeout=0.3).call(command(endpoint.url()))

    assert time.monotonic() - started < 3
    assert isinstance(progress, InProgress)
    assert progress.retry_at == T0 + RETRY_AFTER  # on the run's clock, not the wall's
    assert progress.note == f"before_wave hook {endpoint.url().split('/')[2]}: timed out"


def test_a_refused_connection_is_in_progress(ca: trustme.CA, clock: ManualClock, endpoint: Endpoint) -> None:
    url = endpoint.url()
    endpoint.server.shutdown()
    endpoint.server.server_close()

    progress = hooks(ca, clock).call(command(url))

    assert isinstance(progress, InProgress)
    assert "refused" in progress.note.lower()


def test_an_untrusted_certificate_is_in_progress_naming_the_tls_failure(clock: ManualClock, endpoint: Endpoint) -> None:
    other = trustme.CA()  # the client trusts another CA than the one that signed the endpoint's certificate

    progress = hooks(other, clock).call(command(endpoint.url()))

    assert isinstance(progress, InProgress)
    assert "CERTIFICATE_VERIFY_FAILED" in progress.note
    assert endpoint.received == []


# --- the secret -----------------------------------------------------------------------------------


class RefusingSecrets:
    def get(self, name: str) -> str:
        raise SecretUnavailableError(f"AccessDeniedException reading {name}")


def test_an_unreadable_secret_fails_naming_the_secret_and_sends_nothing(
    ca: trustme.CA, clock: ManualClock, endpoint: Endpoint
) -> None:
    outcome = one(hooks(ca, clock, secrets=RefusingSecrets()).call(command(endpoint.url())))

    assert not outcome.ok
    assert outcome.detail.startswith(f"secret {SECRET_NAME!r} for the before_wave hook is unreadable")
    assert endpoint.received == []


def test_neither_the_key_nor_the_signature_is_logged(
    ca: trustme.CA, clock: ManualClock, endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint.reply = Reply(403, "forbidden")
    with caplog.at_level(logging.DEBUG):
        hooks(ca, clock).call(command(endpoint.url()))

    sent = endpoint.received[0].header(SIGNATURE_HEADER)
    assert caplog.records
    assert KEY not in caplog.text and sent.split("v1=")[1] not in caplog.text


# --- the receiver's check -------------------------------------------------------------------------


def test_verify_signature_refuses_an_old_or_future_timestamp() -> None:
    header = sign(KEY, 1_000, b"{}")

    assert verify_signature(KEY, header, b"{}", now=1_000 + 300)
    assert not verify_signature(KEY, header, b"{}", now=1_000 + 301)
    assert not verify_signature(KEY, header, b"{}", now=1_000 - 301)
    assert verify_signature(KEY, header, b"{}", now=1_000 + 3_000, tolerance=3_600)


@pytest.mark.parametrize("header", ["", "v1=abc", "t=1000", "t=soon,v1=abc", "garbage"])
def test_verify_signature_refuses_a_malformed_header(header: str) -> None:
    assert not verify_signature(KEY, header, b"{}", now=1_000)


def test_verify_signature_accepts_any_matching_v1_while_a_key_is_rotated() -> None:
    old = sign("old key", 1_000, b"{}").split(",")[1]
    header = sign(KEY, 1_000, b"{}") + "," + old

    assert verify_signature(KEY, header, b"{}", now=1_000)
    assert verify_signature("old key", header, b"{}", now=1_000)
    assert not verify_signature("third key", header, b"{}", now=1_000)


def test_the_local_runtime_reads_the_key_from_the_environment_variable_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PATCHPILOT_WAVE_HOOK", raising=False)
    runtime = LocalRuntime.open(tmp_path / "state", start=T0)
    assert runtime.service.wave_hooks is not None

    outcome = one(runtime.service.wave_hooks.call(command("https://127.0.0.1:9/hooks/patch")))

    assert not outcome.ok
    assert outcome.detail == (
        f"secret {SECRET_NAME!r} for the before_wave hook is unreadable: "
        "environment variable 'PATCHPILOT_WAVE_HOOK' is not set"
    )
