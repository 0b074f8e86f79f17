"""Cloud events that reach PatchPilot's waker at a virtual time, for the call-count benchmarks
(bench_aws_calls.py, bench_azure_calls.py): the earliest first, and in the order scheduled."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from datetime import datetime
from typing import Any


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
