"""For the call-count benchmarks (bench_aws_calls.py, bench_azure_calls.py): cloud events that reach
PatchPilot's waker at a virtual time (`DueEvents`), and when the worker applied each command's
result (`record_applied`), from which the waits after each step are measured."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from patchpilot.ports import Clock
from patchpilot.service import Service


class DueEvents:
    def __init__(self) -> None:
        self._due: list[tuple[datetime, int, dict[str, Any]]] = []
        self._order = itertools.count()

    def add(self, at: datetime, event: dict[str, Any]) -> None:
        heapq.heappush(self._due, (at, next(self._order), event))

    def next_due(self) -> datetime | None:
        return self._due[0][0] if self._due else None

    def pop_due(self, now: datetime) -> Iterator[dict[str, Any]]:
        """Every event due at `now`, taken off as it is handed over."""
        while self._due and self._due[0][0] <= now:
            yield heapq.heappop(self._due)[2]


def record_applied(service: Service, clock: Clock) -> dict[str, datetime]:
    """PatchPilot command id -> when `service` first applied its result (filled as the run goes)."""
    applied: dict[str, datetime] = {}
    apply = service._apply

    def recording(event: Any, loaded: Any = None) -> None:
        applied.setdefault(getattr(event, "command_id", ""), clock.now())
        apply(event, loaded)

    service._apply = recording  # type: ignore[method-assign]
    return applied
