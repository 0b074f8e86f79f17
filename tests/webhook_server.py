"""A real local webhook server for the notification tests: 127.0.0.1 on an ephemeral port,
recording every POST; each path answers as Slack (200 "ok") or Teams Workflows (202) do, or
with the answers a test scripts (429 with Retry-After, 500, ...)."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

Owner = TypeVar("Owner")


@dataclass(frozen=True)
class Posted:
    path: str
    headers: dict[str, str]
    raw: bytes
    at: float  # time.monotonic() on arrival

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


@dataclass(frozen=True)
class Reply:
    status: int
    body: str = ""
    headers: tuple[tuple[str, str], ...] = ()


class WebhookServer:
    def __init__(self, server: ThreadingHTTPServer) -> None:
        self._server = server
        self.posts: list[Posted] = []
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._always: dict[str, Reply] = {}
        self._lock = threading.Lock()

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def then(self, path: str, *replies: Reply) -> None:
        """Answer the next posts to `path` with `replies`, in order; then as usual."""
        with self._lock:
            self._scripts[path].extend(replies)

    def always(self, path: str, reply: Reply) -> None:
        with self._lock:
            self._always[path] = reply

    def to(self, path: str) -> list[Posted]:
        return [p for p in self.posts if p.path == path]

    def _answer(self, path: str) -> Reply:
        with self._lock:
            if self._scripts[path]:
                return self._scripts[path].popleft()
            if path in self._always:
                return self._always[path]
        return Reply(200, "ok") if path.startswith("/slack") else Reply(202)

    def _record(self, posted: Posted) -> None:
        with self._lock:
            self.posts.append(posted)


def _handler(owner: WebhookServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            owner._record(Posted(self.path, dict(self.headers.items()), raw, time.monotonic()))
            reply = owner._answer(self.path)
            data = reply.body.encode("utf-8")
            self.send_response(reply.status)
            for name, value in reply.headers:
                self.send_header(name, value)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet tests

    return Handler


@contextmanager
def serving(
    make_owner: Callable[[ThreadingHTTPServer], Owner], handler: Callable[[Owner], type[BaseHTTPRequestHandler]]
) -> Iterator[Owner]:
    """A loopback HTTP server on an ephemeral port, in a thread, for the length of the block:
    `make_owner(server)` records what it is sent, `handler(owner)` answers."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    owner = make_owner(server)
    server.RequestHandlerClass = handler(owner)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield owner
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def webhook_server() -> Iterator[WebhookServer]:
    with serving(WebhookServer, _handler) as owner:
        yield owner
