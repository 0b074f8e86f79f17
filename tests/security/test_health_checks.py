"""HTTP health checks that cannot be turned against PatchPilot or the network it runs in: what
the fleet reports (a machine's name, id, IP) cannot change a check URL's host or path, only http
and https are spoken (a policy with another scheme is refused), redirects stay on the host and
port asked, and a request is bounded in time and in what it reads. Against a real loopback
HTTP server (127.0.0.1, an ephemeral port)."""

from __future__ import annotations

import dataclasses
import threading
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import test_aws_fleet as on_aws
from clocks import ManualClock
from moto import mock_aws
from test_azure_fleet import T0, World, health_command, instance, until_done

from patchpilot.adapters import health
from patchpilot.adapters.health import RedirectRefusedError, UnsafeUrlValueError, fill_url, urllib_get
from patchpilot.errors import InputError
from patchpilot.inventory import Instance
from patchpilot.policy import load_policy
from patchpilot.policy.model import HealthChecks

HUGE = 100 * 1024 * 1024  # bytes of body a hostile server sends behind a redirect


@dataclass
class Server:
    """A loopback server answering GETs: each path's reply is set by a test."""

    httpd: ThreadingHTTPServer
    paths: list[str] = field(default_factory=list)  # every GET, in order
    sent: dict[str, int] = field(default_factory=dict)  # path -> body bytes written before the client left
    release: threading.Event = field(default_factory=threading.Event)  # ends the silent answers

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def _handler(server: Server, routes: dict[str, Any]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.paths.append(self.path)
            route = routes.get(self.path, (200, {}, 0))
            if route == "silent":
                server.release.wait(30)
                return
            status, headers, size = route
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            chunk, sent = b"0" * 65536, 0
            try:
                while sent < size:
                    self.wfile.write(chunk[: size - sent])
                    sent += min(len(chunk), size - sent)
            except OSError:  # the client hung up, as it should
                pass
            server.sent[self.path] = sent

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@contextmanager
def serving(routes: dict[str, Any]) -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    httpd.daemon_threads = True
    server = Server(httpd)
    httpd.RequestHandlerClass = _handler(server, routes)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        httpd.shutdown()
        httpd.server_close()


def machine(name: str = "web-1", id: str = "i-0abc123") -> Instance:
    return Instance(id=id, cloud="aws", region="eu-west-1", os="linux", name=name)


# ---------------------------------------------------------------- the URL


@pytest.mark.parametrize("name", ["x/../admin?", "evil.com#", "evil.com", "user@evil", "..", "web 1", "%2e%2e"])
def test_health_url_placeholder_cannot_change_the_host(name: str) -> None:
    template = "https://{name}.internal:8443/healthz?vm={id}"
    with pytest.raises(UnsafeUrlValueError, match="is not a DNS label or an IP address"):
        fill_url(template, machine(name), "")
    assert urlsplit(fill_url(template, machine("web-01"), "")).netloc == "web-01.internal:8443"


def test_health_url_placeholders_take_labels_and_ip_addresses_only() -> None:
    template = "http://{private_ip}:8080/health/{name}?id={id}"
    assert fill_url(template, machine(), "10.1.2.3") == "http://10.1.2.3:8080/health/web-1?id=i-0abc123"
    for ip in ("10.1.2.3/../admin", "10.1.2.3#", "10.1.2.3@evil.com", ""):
        with pytest.raises(UnsafeUrlValueError, match="private IP"):
            fill_url(template, machine(), ip)
    with pytest.raises(UnsafeUrlValueError, match="instance id"):
        fill_url(template, machine(id="/subscriptions/s/virtualMachines/vm?x"), "10.1.2.3")


def test_a_machine_named_to_redirect_its_check_fails_without_a_request() -> None:
    """The Azure fleet on the fake ARM (as tests/test_azure_fleet.py): the check fails at once,
    naming the value, and no URL is asked for."""
    world = World(ManualClock(T0))
    vm = world.azure.add_vm("web-1", private_ip="10.1.2.3")
    evil = dataclasses.replace(instance(world, vm), name="evil.com#")
    checks = HealthChecks(http=["http://{name}:8080/health"])

    outcomes, _ = until_done(world, lambda: world.fleet().check_health(health_command([evil], checks)))

    assert not outcomes[0].ok
    assert outcomes[0].detail.startswith('instance name "evil.com#" of /subscriptions/')
    assert world.urls == []


@mock_aws()
def test_an_ec2_instance_named_to_redirect_its_check_fails_without_a_request() -> None:
    """moto: EC2; Stubber: DescribeInstanceInformation; a fake http_get (as tests/test_aws_fleet.py).
    The name is the one discovery read from the Name tag."""
    harness = on_aws.Harness()
    target = dataclasses.replace(on_aws.launch(1)[0], name="x/../admin?")
    asked: list[str] = []

    def http_get(url: str, timeout: float) -> int:
        asked.append(url)
        return 200

    on_aws.expect_agents(harness.stub(), [target.id])
    checks = HealthChecks(http=["http://{private_ip}:8080/{name}/health"])
    fleet = on_aws.make_fleet(harness, ManualClock(on_aws.T0), http_get=http_get)

    result = on_aws.outcomes(fleet.check_health(on_aws.health_command([target], checks)))

    harness.done()
    assert not result[target.id].ok
    assert result[target.id].detail == (
        f'instance name "x/../admin?" of {target.id} is not a DNS label or an IP address: '
        "it cannot go into a health-check URL"
    )
    assert asked == []


# ---------------------------------------------------------------- the policy


@pytest.mark.parametrize("url", ["file:///etc/shadow", "ftp://{name}/health", "gopher://{name}/", "//{name}/x"])
def test_file_scheme_health_url_is_a_validation_error(tmp_path: Path, url: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "name: fleet\n"
        "rings:\n  - {name: production, select: {tags: {Environment: production}}}\n"
        f"health:\n  http: [{url!r}]\n"
    )
    with pytest.raises(InputError) as refused:
        load_policy(str(path))
    assert str(refused.value) == (
        f'{path}:5:10: health.http[0]: expected an http or https URL such as "https://{{name}}.internal/healthz", '
        f'got "{url}"'
    )


def test_the_getter_itself_refuses_other_schemes(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root:x")
    for url in (secret.as_uri(), "data:,hello", "ftp://127.0.0.1/"):
        with pytest.raises(ValueError, match="only http and https"):
            urllib_get(url, 1)


# ---------------------------------------------------------------- the request


def test_health_check_does_not_follow_redirect_to_another_host() -> None:
    with serving({}) as elsewhere, serving({}) as target:
        routes = {
            "/to-another-port": (302, {"Location": elsewhere.url("/health")}, 0),
            "/to-another-host": (301, {"Location": target.url("/health", host="localhost")}, 0),
            "/to-this-host": (307, {"Location": "/health"}, 0),
        }
        target.httpd.RequestHandlerClass = _handler(target, routes)

        for path in ("/to-another-port", "/to-another-host"):
            with pytest.raises(RedirectRefusedError, match="not followed: another host or port"):
                urllib_get(target.url(path), 5)
        assert urllib_get(target.url("/to-this-host"), 5) == 200  # a redirect on the host itself is followed

    assert elsewhere.paths == []
    assert target.paths == ["/to-another-port", "/to-another-host", "/to-this-host", "/health"]


def test_health_check_does_not_read_a_huge_redirect_body() -> None:
    """urllib reads a redirect's body to its end before following it: 100 MB here."""
    with serving({"/moved": (302, {"Location": "/health"}, HUGE)}) as server:
        tracemalloc.start()
        try:
            status = urllib_get(server.url("/moved"), 5)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

    assert status == 200 and server.paths == ["/moved", "/health"]
    assert peak < 8 * 1024 * 1024


def test_health_check_timeout_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that never answers holds a check for the cap, not the hour it was given."""
    monkeypatch.setattr(health, "MAX_TIMEOUT", 0.2)
    result: list[BaseException] = []
    with serving({"/health": "silent"}) as server:
        caller = threading.Thread(target=lambda: _capture(result, lambda: urllib_get(server.url("/health"), 3600)))
        caller.start()
        caller.join(60)  # a generous bound on a hang, not a measurement
        server.release.set()
        assert not caller.is_alive(), "the check waited far past the cap"
    (error,) = result
    assert isinstance(error, TimeoutError) or isinstance(getattr(error, "reason", None), TimeoutError)


def _capture(into: list[BaseException], call: Any) -> None:
    try:
        call()
    except BaseException as exc:  # handed to the test's thread
        into.append(exc)
