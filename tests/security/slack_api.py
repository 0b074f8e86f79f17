"""A fake Slack Web API on 127.0.0.1 (an ephemeral port), for slack_sdk's `WebClient(base_url=...)`:
`usergroups.users.list` answers the members of the groups a test gives (`{"ok": true, "users":
[...]}`, as Slack documents it) or `no_such_subteam`, unless the test scripts other replies.
Every call is recorded with its arguments and its Authorization header."""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from webhook_server import Reply, serving


@dataclass(frozen=True)
class Call:
    method: str  # the Web API method: "usergroups.users.list"
    arguments: dict[str, str]  # query string and form body together
    authorization: str


class FakeSlackApi:
    def __init__(self, server: ThreadingHTTPServer) -> None:
        self._server = server
        self.groups: dict[str, list[str]] = {}
        self.calls: list[Call] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/api/"

    def then(self, *replies: Reply) -> None:
        """Answer the next calls with `replies`, in order; then as usual."""
        with self._lock:
            self._script.extend(replies)

    def _answer(self, call: Call) -> Reply:
        with self._lock:
            self.calls.append(call)
            if self._script:
                return self._script.popleft()
        if call.method != "usergroups.users.list":
            return Reply(200, json.dumps({"ok": False, "error": "unknown_method"}))
        members = self.groups.get(call.arguments.get("usergroup", ""))
        if members is None:
            return Reply(200, json.dumps({"ok": False, "error": "no_such_subteam"}))
        return Reply(200, json.dumps({"ok": True, "users": members}))


def _handler(owner: FakeSlackApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length", "0") or 0)
            form = self.rfile.read(length).decode("utf-8") if length else ""
            arguments = dict(parse_qsl(parts.query)) | dict(parse_qsl(form))
            method = parts.path.removeprefix("/api/")
            reply = owner._answer(Call(method, arguments, self.headers.get("Authorization", "")))
            data = reply.body.encode("utf-8")
            self.send_response(reply.status)
            for name, value in reply.headers:
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet tests

    return Handler


@contextmanager
def fake_slack_api() -> Iterator[FakeSlackApi]:
    with serving(FakeSlackApi, _handler) as owner:
        yield owner
