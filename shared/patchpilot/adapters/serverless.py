"""What the two serverless runtimes (Lambda, Azure Functions) share: the wall clock, the
notifier that writes to the structured log when no Slack or Teams channel is routed, and the notifier
that writes a run's report when the run ends."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from patchpilot.engine.messages import Notify
    from patchpilot.engine.run import Run
    from patchpilot.ports import Notifier, RunStore

log = logging.getLogger("patchpilot.reports")
RUN_END_TOPICS = frozenset({"run_finished", "run_halted"})


class WallClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class LogNotifier:
    """The structured log: where notices go when the run's policy routes none to Slack or Teams
    (`patchpilot.notify.RoutedNotifier` falls back to it)."""

    def __init__(self, log: Any) -> None:
        self.log = log

    def notify(self, command: Notify) -> None:
        self.log.info(command.text, extra={"topic": command.topic, "severity": command.severity})


class ReportingNotifier:
    """Before the notice of a run's end goes out, the run's report is written (`publish` returns
    where) and the notice names it. A report that cannot be written is logged and the notice goes
    out anyway: a notification never fails the run."""

    def __init__(self, inner: Notifier, store: RunStore, publish: Callable[[Run], str]) -> None:
        self.inner = inner
        self.store = store
        self.publish = publish

    def notify(self, command: Notify) -> None:
        if command.topic in RUN_END_TOPICS:
            try:
                run = self.store.load(command.run_id)
                if run.finished:
                    location = self.publish(run)
                    command = command.model_copy(update={"text": f"{command.text} Report: {location}"})
            except Exception as error:  # storage down, a report that does not render: say so, notify anyway
                log.warning("the report of run %s was not written: %s", command.run_id, error)
        self.inner.notify(command)
