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

log = logging.getLogger("patchpilot.notify")
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


class ApprovalLinksNotifier:
    """An "approval needed" notice gets signed, expiring Approve and Reject links (`base_url`
    plus `?token=`): Teams and e-mail show them as buttons that open the confirmation page; Slack
    turns them into interactive buttons carrying the token. Without a signing key or an endpoint
    the notice goes out as it is (the CLI approves); a key that cannot be read is logged."""

    def __init__(
        self,
        inner: Notifier,
        load_run: Callable[[str], Run],
        signing_key: Callable[[], str | None],
        base_url: str | None,
    ) -> None:
        self.inner = inner
        self.load_run = load_run
        self.signing_key = signing_key
        self.base_url = base_url

    def notify(self, command: Notify) -> None:
        if command.topic == "approval_needed" and self.base_url:
            try:
                command = self._with_links(command)
            except Exception as error:  # the key or the run unreadable: the notice still goes
                log.warning("approval links for run %s were not made: %s", command.run_id, error)
        self.inner.notify(command)

    def _with_links(self, command: Notify) -> Notify:
        from urllib.parse import urlencode

        from patchpilot.approvals import ApprovalRequest, sign_approval

        key = self.signing_key()
        run = self.load_run(command.run_id)
        assert self.base_url is not None
        if not key or run.state != "awaiting_approval":
            return command
        links = []
        for label, decision in (("Approve", "approve"), ("Reject", "reject")):
            token = sign_approval(ApprovalRequest(run.run_id, run.current.ring, decision), key)
            joint = "&" if "?" in self.base_url else "?"  # an Azure function key may be in the URL already
            links.append(f"{label}: {self.base_url}{joint}{urlencode({'token': token})}")
        return command.model_copy(update={"text": " ".join([command.text, *links])})
