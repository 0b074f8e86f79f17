"""Azurite, the Storage emulator, for the tests of the Table and Queue adapters: a pytest plugin
(``pytest_plugins = ["azurite"]`` in a test module) with the session fixture `azurite`.

`make test` installs Azurite 3.35.0 (the last release for Node 20) into build/azurite; the
fixture starts one process on free ports of 127.0.0.1, in memory, waits until it listens and
stops it at the end. Tests take fresh table and queue names (`Azurite.unique_name`). Test
modules import this one for type checking only: imported first, pytest could not rewrite its
asserts as a plugin's.

Azurite's clock can be set from the tests, as moto's SQS follows the test's clock: a script
preloaded into Node (`CLOCK_JS`) replaces `Date` by one that can be frozen at a given moment,
through a small HTTP endpoint of its own. `Azurite.follow(clock)` returns a `raw_request_hook`
for the SDK clients that sets Azurite's time to `clock.now()` before each of their requests,
so a 15-minute visibility timeout passes in a `clock.advance`; `release_clock` (after every
test that follows a clock) gives Azurite real time again.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pytest
import requests

AZURITE = Path(__file__).resolve().parent.parent / "build" / "azurite" / "node_modules" / ".bin" / "azurite"
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="  # Azurite's own
START_SECONDS = 60.0
FLAGS = [
    "--silent",
    "--disableTelemetry",
    "--inMemoryPersistence",
    "--skipApiVersionCheck",
    "--extentMemoryLimit",
    "256",
]
_LISTENING = re.compile(r"Azurite (Blob|Queue|Table|clock control) .*listening at (http://127\.0\.0\.1:\d+)")

CLOCK_JS = """\
"use strict";
// Preloaded into Azurite: Date can be frozen at a moment the tests choose.
// PUT /now?ms=<epoch milliseconds> freezes it there, DELETE /now gives real time back.
const http = require("http");
const RealDate = Date;
let frozen = null;
class ClockDate extends RealDate {
  constructor(...args) {
    if (args.length === 0 && frozen !== null) super(frozen);
    else super(...args);
  }
  static now() { return frozen === null ? RealDate.now() : frozen; }
  static [Symbol.hasInstance](value) { return value instanceof RealDate; }
}
globalThis.Date = ClockDate;
const server = http.createServer((request, response) => {
  const url = new URL(request.url, "http://clock");
  if (request.method === "PUT") frozen = Number(url.searchParams.get("ms"));
  else if (request.method === "DELETE") frozen = null;
  response.end(String(ClockDate.now()));
});
server.unref();  // Azurite still exits when its own servers close
server.listen(0, "127.0.0.1", () => {
  console.log(`Azurite clock control is listening at http://127.0.0.1:${server.address().port}`);
});
"""


class Clock(Protocol):
    def now(self) -> datetime: ...


@dataclass
class Azurite:
    process: subprocess.Popen[str]
    endpoints: dict[str, str]  # Blob, Queue, Table, clock control -> http://127.0.0.1:<port>
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={self.endpoints['Blob']}/{ACCOUNT};"
            f"QueueEndpoint={self.endpoints['Queue']}/{ACCOUNT};"
            f"TableEndpoint={self.endpoints['Table']}/{ACCOUNT};"
        )

    @staticmethod
    def unique_name(prefix: str = "pp") -> str:
        """A fresh table or queue name (letters and digits, starting with a letter)."""
        return f"{prefix}{uuid.uuid4().hex[:16]}"

    def follow(self, clock: Clock) -> Callable[[Any], None]:
        """A `raw_request_hook` for SDK clients: Azurite's time is `clock.now()` at each request."""

        def set_time(request: Any) -> None:
            milliseconds = int(clock.now().timestamp() * 1000)
            self.session.put(f"{self.endpoints['clock control']}/now", params={"ms": milliseconds}).raise_for_status()

        return set_time

    def release_clock(self) -> None:
        self.session.delete(f"{self.endpoints['clock control']}/now").raise_for_status()

    def stop(self) -> None:
        self.session.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start(workdir: Path) -> Azurite:
    if not AZURITE.exists():
        pytest.fail(
            f"Azurite is not installed ({AZURITE} is missing): `make test` installs it"
            " (npm install --prefix build/azurite azurite@3.35.0)",
            pytrace=False,
        )
    clock_js = workdir / "clock.js"
    clock_js.write_text(CLOCK_JS)
    env = {**os.environ, "NODE_OPTIONS": f"{os.environ.get('NODE_OPTIONS', '')} --require {clock_js}".strip()}
    ports = [
        arg
        for service in ("blob", "queue", "table")
        for arg in (f"--{service}Host", "127.0.0.1", f"--{service}Port", "0")
    ]
    process = subprocess.Popen(
        [str(AZURITE), *FLAGS, *ports],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:  # reads everything Azurite prints, so its pipe never fills up
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, name="azurite-output", daemon=True).start()
    endpoints: dict[str, str] = {}
    output: list[str] = []
    try:
        while len(endpoints) < 4:
            line = lines.get(timeout=START_SECONDS)
            if line is None:
                raise RuntimeError("Azurite exited")
            output.append(line)
            if found := _LISTENING.search(line):
                endpoints[found.group(1)] = found.group(2)
    except (RuntimeError, queue.Empty) as error:
        process.kill()
        process.wait()
        text = "".join(output) or "(no output)"
        pytest.fail(f"Azurite did not start ({type(error).__name__}: {error}):\n{text}", pytrace=False)
    return Azurite(process, endpoints)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    running = start(tmp_path_factory.mktemp("azurite"))
    try:
        yield running
    finally:
        running.stop()
