"""The notifier that routes each notice to the Slack and Teams channels its policy names.

Delivery is at least once and never fails the run.

**Sent once per (notice, channel), across processes.** The engine's Notify commands may be
delivered twice, to two containers at once, or again after a crash. With a `Claims` store
(SQLite locally, the run table on DynamoDB or Table Storage) each post is bracketed by one key,
`notice:<notice id>:<channel>`:

1. claim it with a short *lease* (`lease`, 5 min): a worker that does not get it skips the
   channel, since another one has sent the notice or is sending it right now;
2. post (with the webhook client's retries);
3. delivered: *renew* the claim for `keep` (14 days, SQS's longest retention), so any later
   duplicate skips it; not delivered: give the lease up, so a redelivery may try again.

A worker that dies between 1 and 2 holds only the lease. Its own delivery of the command was not
acknowledged, so the queue delivers it again after the visibility timeout (12 min on SQS, 10 min
for the Functions host, 15 min locally), always longer than the lease, and that delivery posts the
notice: nothing is lost. A worker that dies between 2 and 3 leaves a lease that lapses; the
redelivery then posts again: a duplicate, in the window of one write after a post. The other
order (a record written before the post) would lose the notice in a crash; a lease alone would
let a late duplicate through. A claims store that cannot be reached does not stop the post (a
duplicate rather than a loss). Without a `Claims` store duplicates are skipped within the
process only.

**Undelivered notices are recorded.** A notice that still fails after the retries is logged with
the channel's name (never its URL: every reason goes through `patchpilot.redact` with the webhook
URLs the notifier has read), kept in `undelivered`, and, for a notice of a stored run,
given to `record` as a `NoticeUndelivered` event: the runtimes publish it, the engine adds it to
the run (`Run.undelivered`), and `patchpilot status`, the status endpoints and the run report
show it with the channel and the reason. The heads-up of a run not started yet and the answers
to advisories have no run to hold the record: they are logged only.

The chat renderers and the webhook client (slack_sdk) load with the first post: most deliveries
of a run's steps send no notice, and a cold start of a function pays for every import.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias

from patchpilot.notify.messages import LIST_TOPICS, Card, card_for
from patchpilot.policy import Policy
from patchpilot.policy.model import NotificationChannel, Notifications, TeamsMention
from patchpilot.ports import Claims, Clock, Notifier, Secrets
from patchpilot.redact import PROCESS_SECRETS, Redactor, install_filter
from patchpilot.triggers import heads_up

if TYPE_CHECKING:
    from patchpilot.engine.messages import NoticeUndelivered, Notify
    from patchpilot.engine.run import Run
    from patchpilot.notify.webhook import Answer, Pacer, Poster

log = logging.getLogger("patchpilot.notify")
INTERVALS = {"slack": 1.0, "teams": 0.25}  # seconds between two posts to one webhook
LEASE = timedelta(minutes=5)  # one post with its retries; shorter than every queue's visibility timeout
KEEP = timedelta(days=14)  # how long a delivered notice is remembered
Links = tuple[tuple[str, str], ...]  # (label, https URL)
# The links a notice carries to one channel (signed approval links, made per channel): only the
# chat renderers see them, never a notice's text, the log, the run or a report.
LinkMaker: TypeAlias = "Callable[[Notify, str], Links]"


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


def post_json(url: str, payload: dict[str, Any]) -> Answer:
    """`notify.webhook.post_json` (slack_sdk's webhook client), loaded by the first post."""
    from patchpilot.notify.webhook import post_json as post

    return post(url, payload)


def render(channel: NotificationChannel, card: Card) -> dict[str, object]:
    from patchpilot.notify import slack, teams

    mention = channel.mention
    if channel.kind == "slack":
        return slack.slack_message(card, mention if isinstance(mention, str) else None)
    return teams.teams_message(card, mention if isinstance(mention, TeamsMention) else None)


class RoutedNotifier:
    """Routes by the run's policy (`load_run`); with no `notifications` section, or no run,
    the notice goes to `fallback` (the log on the clouds), if any. `claims` (built on first use)
    and `clock` make "sent once" hold across processes (the clock also dates an undelivered
    notice: `notify/` reads no clock of its own); `record` receives the undelivered
    notices of stored runs (see the module docstring). `links(notice, channel name)` adds the
    links a channel's card carries (approval links); `redactor` learns each webhook URL read and
    cleans every reason (the process's, by default: it also filters the `patchpilot` loggers)."""

    def __init__(
        self,
        secrets: Secrets | None,
        load_run: Callable[[str], Run],
        fallback: Notifier | None,
        *,
        post: Poster = post_json,
        pacer: Pacer | None = None,
        clock: Clock,
        claims: Callable[[], Claims] | None = None,
        record: Callable[[NoticeUndelivered], None] | None = None,
        lease: timedelta = LEASE,
        keep: timedelta = KEEP,
        links: LinkMaker | None = None,
        redactor: Redactor = PROCESS_SECRETS,
    ) -> None:
        self.secrets = secrets
        self.load_run = load_run
        self.fallback = fallback
        self.post = post
        self._pacer = pacer
        self.claims = claims
        self.clock = clock
        self.record = record
        self.lease = lease
        self.keep = keep
        self.links = links
        self.redactor = redactor
        install_filter(redactor)
        self.undelivered: list[Undelivered] = []
        self._sent: set[tuple[str, str]] = set()
        self._routing: dict[str, Notifications | None] = {}

    @functools.cached_property
    def pacer(self) -> Pacer:
        from patchpilot.notify.webhook import Pacer

        return self._pacer or Pacer()

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
        self.send(command, notifications, run, recorded=command.run_id in self._routing)

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

    def send(
        self,
        command: Notify,
        notifications: Notifications | None,
        run: Run | None = None,
        *,
        recorded: bool = False,
        keep_until: datetime | None = None,
    ) -> None:
        """Deliver to the routed channels (the trigger's "run scheduled" notice has no run yet);
        `recorded`: the notice's run is stored, and holds the record of a failed delivery;
        `keep_until`: remember a delivered notice until then rather than for `keep` (the timer's
        notices about what lies further ahead, which later reads announce again)."""
        if notifications is None:
            if self.fallback is not None:
                self.fallback.notify(command)
            return
        card = card_for(command, run)
        for channel in channels_for(notifications, command):
            if (command.id, channel.name) in self._sent:
                continue
            key = f"notice:{command.id}:{channel.name}"
            if not self._lease(key):
                log.info("notice %s to %s: sent already, or being sent by another worker", command.id, channel.name)
                continue
            reason = self._deliver(channel, self._with_links(card, command, channel.name))
            if reason is None:
                self._sent.add((command.id, channel.name))
                hold = self.keep if keep_until is None else keep_until - self.clock.now()
                self._settle(key, max(hold, self.keep))
                log.info("notice %s sent to %s", command.id, channel.name)
                continue
            log.warning("notice %s not delivered to channel %s: %s", command.id, channel.name, reason)
            self.undelivered.append(Undelivered(command.id, channel.name, reason))
            if recorded and self.record is not None:
                self.record(self._failure(command, channel.name, reason))
            self._settle(key, -timedelta(seconds=1))  # given up: a redelivery may try again

    def _with_links(self, card: Card, command: Notify, channel: str) -> Card:
        if self.links is None:
            return card
        try:
            extra = self.links(command, channel)
        except Exception as error:  # a key or the run unreadable: the notice goes without them
            log.warning("notice %s: links for %s not made: %s", command.id, channel, self.redactor(str(error)))
            return card
        return replace(card, links=card.links + extra)

    def _lease(self, key: str) -> bool:
        """False when another worker has sent, or is sending, this notice to this channel. An
        unreachable claims store sends anyway: a duplicate rather than a loss."""
        if self.claims is None:
            return True
        try:
            return self.claims().claim(key, self.clock.now() + self.lease)
        except Exception as error:
            log.warning("%s: not claimed (%s: %s); sending anyway", key, type(error).__name__, error)
            return True

    def _settle(self, key: str, hold: timedelta) -> None:
        if self.claims is None:
            return
        try:
            self.claims().renew(key, self.clock.now() + hold)
        except Exception as error:  # the lease lapses by itself: at worst a duplicate
            log.warning("%s: claim not renewed (%s: %s)", key, type(error).__name__, error)

    def _failure(self, command: Notify, channel: str, reason: str) -> NoticeUndelivered:
        from patchpilot.engine.messages import NoticeUndelivered

        return NoticeUndelivered(
            id=f"{command.id}:undelivered:{channel}",
            run_id=command.run_id,
            notice_id=command.id,
            topic=command.topic,
            channel=channel,
            reason=reason,
            at=self.clock.now(),
        )

    def _deliver(self, channel: NotificationChannel, card: Card) -> str | None:
        """None once delivered, else why not (never naming the URL)."""
        if self.secrets is None:
            return f"no secret store configured to read {channel.webhook!r}"
        url = ""
        try:
            url = self.secrets.get(channel.webhook)
            self.redactor.add(url)
            payload = render(channel, card)
            self.pacer.wait(url, INTERVALS[channel.kind])
            answer = self.post(url, payload)
        except Exception as error:  # a missing secret, a refused connection: recorded, never raised
            return self.redactor(f"{type(error).__name__}: {error}")
        from patchpilot.notify import slack, teams

        ok = slack.delivered if channel.kind == "slack" else teams.delivered
        if ok(answer.status, answer.body):
            return None
        # redacted whole, then cut: a cut first could leave a piece too short to recognise
        return f"HTTP {answer.status}: {self.redactor(answer.body)[:200]}"


class EveryNotifier:
    """Each notice to every notifier in turn (locally: the notifications file, then chat)."""

    def __init__(self, *notifiers: Notifier) -> None:
        self.notifiers = notifiers

    def notify(self, command: Notify) -> None:
        for notifier in self.notifiers:
            notifier.notify(command)
