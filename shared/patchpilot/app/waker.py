"""The waker: a cloud event read into a `Signal` becomes the `LookNow` messages of the runs it
concerns (patchpilot/wakeups.py), published on the step queue for the end of their window. It
reads the run store (the runs under way) and sends to the step queue: nothing else, and nothing
that a forged event could turn into an effect (the worker polls only what the stored run awaits).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from itertools import groupby

from patchpilot.engine.run import Run
from patchpilot.ports import ActiveRuns, Clock, Queue, UnknownRunError
from patchpilot.wakeups import Signal, WakeUp, wake_ups

log = logging.getLogger("patchpilot.waker")


class Waker:
    """Over the run store's index of runs under way and the step queue (each built on first use)."""

    def __init__(self, runs: Callable[[], ActiveRuns], queue: Callable[[], Queue], clock: Clock) -> None:
        self.runs = runs
        self.queue = queue
        self.clock = clock

    def wake(self, signal: Signal | None) -> list[WakeUp]:
        """Publish the wake-ups `signal` asks for (none for None: an event that wakes nothing)."""
        if signal is None:
            return []
        store = self.runs()
        active: list[Run] = []
        for run_id in store.active_run_ids():
            try:
                active.append(store.load(run_id))
            except UnknownRunError:  # the index lags behind: gone meanwhile
                continue
        woken = wake_ups(signal, active)
        now = self.clock.now()
        for at, group in groupby(sorted(woken, key=lambda w: w.at), key=lambda w: w.at):
            self.queue().publish([w.look for w in group], at=at if at > now else None)
        if not woken:
            log.info("%s: no run awaits it", signal.source)
        return woken
