"""Structured logs of the Function App: every line PatchPilot writes is one JSON object with the
function, the invocation id and, once known, the run id as `correlation_id`.

The Python worker forwards the standard `logging` records of an invocation to the host, which
sends them to Application Insights as traces tagged with the invocation (`operation_Id`,
`InvocationId`); the JSON body makes the run id queryable as well:

    traces | extend entry = parse_json(message) | where entry.correlation_id == "<run id>"

Fields live in a context variable set per invocation, so concurrent invocations on one worker
(threads) never mix them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_fields: ContextVar[dict[str, Any] | None] = ContextVar("patchpilot_log_fields", default=None)


class StructuredLogger(logging.LoggerAdapter[logging.Logger]):
    """`log.info("text", extra={...})` writes `{"message": "text", ...context, ...extra}`."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        entry = {"message": str(msg), **(_fields.get() or {}), **(kwargs.pop("extra", None) or {})}
        return json.dumps(entry, default=str), kwargs


log = StructuredLogger(logging.getLogger("patchpilot"), {})


@contextmanager
def invocation(function: str, invocation_id: str, **fields: Any) -> Iterator[None]:
    """The log context of one invocation: the function, its invocation id and `fields`."""
    token = _fields.set({"function": function, "invocation_id": invocation_id, **fields})
    try:
        yield
    finally:
        _fields.reset(token)


def set_correlation_id(run_id: str) -> None:
    """From now on in this invocation, every line carries the run id."""
    _fields.set({**(_fields.get() or {}), "correlation_id": run_id})
