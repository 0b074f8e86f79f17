"""What the two serverless runtimes (Lambda, Azure Functions) share as adapters: the wall clock,
the notifier that writes to the structured log when no Slack or Teams channel is routed, the
notifier that writes a run's report when the run ends, and the approval links of a notice. What
they do with them is the application (`patchpilot.app`), composed by `patchpilot.bootstrap.serverless`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from patchpilot.engine.messages import Notify
    from patchpilot.engine.run import Run
    from patchpilot.notify.routing import Links
    from patchpilot.ports import Notifier, RunStore

log = logging.getLogger("patchpilot.notify")
RUN_END_TOPICS = frozenset({"run_finished", "run_halted"})
# The overview page is written again at these notices: a run's start, each ring's end, an approval request, its end.
OVERVIEW_TOPICS = RUN_END_TOPICS | {"run_started", "ring_finished", "approval_needed"}


class WallClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class LogNotifier:
    """The structured log: where notices go when the run's policy routes none to Slack or Teams
    (`patchpilot.notify.RoutedNotifier` falls back to it). It never prints an approval link or a
    function key (`patchpilot.redact`): an approval notice says where to approve instead."""

    def __init__(self, log: Any) -> None:
        self.log = log

    def notify(self, command: Notify) -> None:
        from patchpilot.redact import PROCESS_SECRETS

        text = PROCESS_SECRETS(command.text)
        if command.topic == "approval_needed":
            text += f" {approve_hint()}"
        self.log.info(text, extra={"topic": command.topic, "severity": command.severity})


def approve_hint() -> str:
    """Where the approval links are, for a text that never carries one (the log)."""
    return (
        "(approval links go only to the Slack and Teams channels the policy routes approval_needed to, "
        "never to the log: route one there to approve from chat; docs/notifications.md)"
    )


class ReportingNotifier:
    """Before the notice of a run's end goes out, the run's report is written (`publish` returns
    where) and the notice names it; then, and when a run starts, ends a ring or waits for an
    approval, the overview page is written again (`overview`). A report that cannot be written
    is logged and the notice goes out anyway: a notification never fails the run."""

    def __init__(
        self,
        inner: Notifier,
        store: RunStore,
        publish: Callable[[Run], str],
        overview: Callable[[], object] | None = None,
    ) -> None:
        self.inner = inner
        self.store = store
        self.publish = publish
        self.overview = overview

    def notify(self, command: Notify) -> None:
        if command.topic in RUN_END_TOPICS:
            try:
                run = self.store.load(command.run_id)
                if run.finished:
                    location = self.publish(run)
                    command = command.model_copy(update={"text": f"{command.text} Report: {location}"})
            except Exception as error:  # storage down, a report that does not render: say so, notify anyway
                log.warning("the report of run %s was not written: %s", command.run_id, error)
        if self.overview is not None and command.topic in OVERVIEW_TOPICS:
            self.overview()  # logs its own failure, never raises
        self.inner.notify(command)


class ApprovalLinks:
    """The signed, expiring Approve and Reject links (`base_url` plus `?token=`) of an "approval
    needed" notice, made for one channel (the token names it: the link's recipient): the routed
    notifier gives them to that channel's card only, never to a notice's text, so they reach no
    log, run record or report. Teams shows them as buttons that open the confirmation page; Slack
    turns them into interactive buttons carrying the token. Without a signing key or an endpoint,
    none (the CLI approves); a key that cannot be read is logged."""

    def __init__(
        self, load_run: Callable[[str], Run], signing_key: Callable[[], str | None], base_url: str | None
    ) -> None:
        self.load_run = load_run
        self.signing_key = signing_key
        self.base_url = base_url

    def __call__(self, command: Notify, channel: str) -> Links:
        if command.topic != "approval_needed" or not self.base_url:
            return ()
        try:
            return self._links(command, channel)
        except Exception as error:  # the key or the run unreadable: the notice still goes
            log.warning("approval links for run %s were not made: %s", command.run_id, error)
            return ()

    def _links(self, command: Notify, channel: str) -> Links:
        from urllib.parse import urlencode

        from patchpilot.approvals import ApprovalRequest, sign_approval
        from patchpilot.redact import PROCESS_SECRETS

        key = self.signing_key()
        run = self.load_run(command.run_id)
        assert self.base_url is not None
        if not key or run.state != "awaiting_approval":
            return ()
        joint = "&" if "?" in self.base_url else "?"  # an Azure function key may be in the URL already
        links = []
        for label, decision in (("Approve", "approve"), ("Reject", "reject")):
            token = sign_approval(ApprovalRequest(run.run_id, run.current.ring, decision, channel), key)
            PROCESS_SECRETS.add(token)  # a chat platform's error that echoes it is scrubbed
            links.append((label, f"{self.base_url}{joint}{urlencode({'token': token})}"))
        return tuple(links)
