"""The waker: a cloud event read into a `Signal` becomes the `LookNow` messages of the runs it
concerns (patchpilot/wakeups.py), published on the step queue for the end of their window. It
reads the run store (the runs under way) and sends to the step queue: nothing else, and nothing
that a forged event could turn into an effect (the worker polls only what the stored run awaits).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from itertools import groupby

from patchpilot.engine.run import Run
from patchpilot.ports import ActiveRuns, Clock, Queue, UnknownRunError
from patchpilot.wakeups import WINDOW, Signal, WakeUp, wake_ups, window_end

log = logging.getLogger("patchpilot.waker")


class Waker:
    """Over the run store's index of runs under way and the step queue (each built on first use).

    A warm container remembers, until their window has passed, the wake-ups it has published (it
    publishes each id once) and the snapshot-set ends it has read (the events of one window, account
    and region wake the same runs: one lookup). Containers running side by side may each publish a
    wake-up once: the worker polls once per id (`Service.claims`)."""

    def __init__(
        self,
        runs: Callable[[], ActiveRuns],
        queue: Callable[[], Queue],
        clock: Clock,
        home_account: str | None = None,
    ) -> None:
        """`home_account`: the account of the machines that name none (the deployment's own), so
        that another account's snapshot ends, forwarded to the waker, wake none of its runs."""
        self.runs = runs
        self.queue = queue
        self.clock = clock
        self.home_account = home_account
        self._published: dict[str, datetime] = {}  # wake-up id -> the end of its window
        self._read: dict[tuple[str, str | None, str | None, datetime], datetime] = {}  # snapshot-set ends read

    def wake(self, signal: Signal | None) -> list[WakeUp]:
        """Publish the wake-ups `signal` asks for (none for None: an event that wakes nothing);
        those published (by this container, for this window) already are not published again."""
        if signal is None:
            return []
        now = self.clock.now()
        self._forget(now)
        end = window_end(signal.at)
        if not signal.machines:  # a snapshot-set end: the same runs as the last one of its window
            key = (signal.kind, signal.account, signal.region, end)
            if key in self._read:
                return []
            self._read[key] = end
        woken = [w for w in self._lookup(signal) if w.look.id not in self._published]
        for at, group in groupby(sorted(woken, key=lambda w: w.at), key=lambda w: w.at):
            self.queue().publish([w.look for w in group], at=at if at > now else None)
        self._published.update((w.look.id, w.at) for w in woken)
        return woken

    def _forget(self, now: datetime) -> None:
        """What lies more than a window in the past: no later event can share its window."""
        horizon = now - 2 * WINDOW
        self._published = {k: at for k, at in self._published.items() if at > horizon}
        self._read = {k: at for k, at in self._read.items() if at > horizon}

    def _lookup(self, signal: Signal) -> list[WakeUp]:
        store = self.runs()
        active: list[Run] = []
        for run_id in store.active_run_ids():
            try:
                active.append(store.load(run_id))
            except UnknownRunError:  # the index lags behind: gone meanwhile
                continue
        woken = wake_ups(signal, active, home_account=self.home_account)
        if not woken:
            log.info("%s: no run awaits it", signal.source)
        return woken
