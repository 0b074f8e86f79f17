"""The notifier that routes each notice to the Slack and Teams channels its policy names.

Delivery is at least once and never fails the run: a notice that cannot be delivered after the
webhook client's retries is logged with the channel's name (never its URL) and kept in
`undelivered`. Duplicates (the engine's Notify commands may be delivered twice) are skipped by
an in-process record of (notice id, channel) pairs already sent: it lasts as long as the process
(a warm Lambda container, a Functions worker, one CLI invocation), so a redelivery to another
container, or after a restart, can post a notice a second time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from patchpilot.engine.messages import Notify
from patchpilot.engine.run import Run
from patchpilot.notify import slack, teams
from patchpilot.notify.messages import LIST_TOPICS, Card, card_for
from patchpilot.notify.webhook import Pacer, Poster, post_json
from patchpilot.policy import Policy
from patchpilot.policy.model import NotificationChannel, Notifications, TeamsMention
from patchpilot.ports import Notifier, Secrets
from patchpilot.triggers import heads_up

log = logging.getLogger("patchpilot.notify")
INTERVALS = {"slack": 1.0, "teams": 0.25}  # seconds between two posts to one webhook


@dataclass(frozen=True)
class Undelivered:
    notice_id: str
    channel: str
    reason: str


def channels_for(notifications: Notifications, notice: Notify) -> list[NotificationChannel]:
    """Every channel a route sends this topic to, once each, in the order the policy lists them."""
    wanted = {
        name
        for route in notifications.routes
        if route.topics == "*" or notice.topic in route.topics
        for name in route.channels
    }
    return [channel for channel in notifications.channels if channel.name in wanted]


def render(channel: NotificationChannel, card: Card) -> dict[str, object]:
    mention = channel.mention
    if channel.kind == "slack":
        return slack.slack_message(card, mention if isinstance(mention, str) else None)
    return teams.teams_message(card, mention if isinstance(mention, TeamsMention) else None)


class RoutedNotifier:
    """Routes by the run's policy (`load_run`); with no `notifications` section, or no run,
    the notice goes to `fallback` (the log on the clouds), if any."""

    def __init__(
        self,
        secrets: Secrets | None,
        load_run: Callable[[str], Run],
        fallback: Notifier | None,
        *,
        post: Poster = post_json,
        pacer: Pacer | None = None,
    ) -> None:
        self.secrets = secrets
        self.load_run = load_run
        self.fallback = fallback
        self.post = post
        self.pacer = pacer or Pacer()
        self.undelivered: list[Undelivered] = []
        self._sent: set[tuple[str, str]] = set()
        self._routing: dict[str, Notifications | None] = {}

    def notify(self, command: Notify) -> None:
        # A run's policy never changes: its routing is loaded once per process; the run itself
        # again only for the notices that list its failed instances.
        known = command.run_id in self._routing
        notifications = self._routing.get(command.run_id)
        run = None
        if not known or (notifications is not None and command.topic in LIST_TOPICS):
            run = self._load(command)
            notifications = run.policy.notifications if run is not None else notifications
            if run is not None:
                self._routing[command.run_id] = notifications
        self.send(command, notifications, run)

    def _load(self, command: Notify) -> Run | None:
        try:
            return self.load_run(command.run_id)
        except Exception as error:  # an unknown run, the store unreachable: the notice still goes out
            log.warning("notice %s: run %s not loaded (%s)", command.id, command.run_id, error)
            return None

    def announce(self, policy: Policy, now: datetime) -> None:
        """The timer's "run scheduled" heads-up, when one is due (`triggers.heads_up`)."""
        if policy.notifications is not None:
            notice = heads_up(policy, now, policy.notifications.heads_up)
            if notice is not None:
                self.send(notice, policy.notifications)

    def send(self, command: Notify, notifications: Notifications | None, run: Run | None = None) -> None:
        """Deliver to the routed channels (the trigger's "run scheduled" notice has no run yet)."""
        if notifications is None:
            if self.fallback is not None:
                self.fallback.notify(command)
            return
        card = card_for(command, run)
        for channel in channels_for(notifications, command):
            if (command.id, channel.name) in self._sent:
                continue
            reason = self._deliver(channel, card)
            if reason is None:
                self._sent.add((command.id, channel.name))
                log.info("notice %s sent to %s", command.id, channel.name)
            else:
                log.warning("notice %s not delivered to channel %s: %s", command.id, channel.name, reason)
                self.undelivered.append(Undelivered(command.id, channel.name, reason))

    def _deliver(self, channel: NotificationChannel, card: Card) -> str | None:
        """None once delivered, else why not (never naming the URL)."""
        if self.secrets is None:
            return f"no secret store configured to read {channel.webhook!r}"
        url = ""
        try:
            url = self.secrets.get(channel.webhook)
            payload = render(channel, card)
            self.pacer.wait(url, INTERVALS[channel.kind])
            answer = self.post(url, payload)
        except Exception as error:  # a missing secret, a refused connection: recorded, never raised
            return _scrubbed(f"{type(error).__name__}: {error}", url)
        ok = slack.delivered if channel.kind == "slack" else teams.delivered
        if ok(answer.status, answer.body):
            return None
        return _scrubbed(f"HTTP {answer.status}: {answer.body[:200]}", url)


def _scrubbed(text: str, url: str) -> str:
    return text.replace(url, "<webhook URL>") if url else text


class EveryNotifier:
    """Each notice to every notifier in turn (locally: the notifications file, then chat)."""

    def __init__(self, *notifiers: Notifier) -> None:
        self.notifiers = notifiers

    def notify(self, command: Notify) -> None:
        for notifier in self.notifiers:
            notifier.notify(command)
