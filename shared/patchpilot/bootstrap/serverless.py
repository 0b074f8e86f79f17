"""What the two serverless runtimes (Lambda, Azure Functions) compose alike: the notices (routed to
Slack and Teams, approval links added, the log otherwise), the timer (`patchpilot.app.timer`), the
approval endpoints (`patchpilot.app.approvals`) and the advisories (`patchpilot.advisories.intake`),
over the ports a runtime builds (`ServerlessPorts`, each a function: a port is built on first use,
since a cold start pays for every client and import)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from patchpilot.app.approvals import ApprovalAnswer, ApprovalEndpoints, SlackAnswer
    from patchpilot.app.compliance_timer import ComplianceTimer
    from patchpilot.app.discovery import CachedDiscovery
    from patchpilot.app.overview import Overview
    from patchpilot.app.timer import Timer
    from patchpilot.app.watch import MaintenanceWatch
    from patchpilot.approvals import ApprovalRequest, Approver
    from patchpilot.chat_approvals import SlackAction, SlackGroups
    from patchpilot.engine.messages import NoticeUndelivered
    from patchpilot.engine.run import Run
    from patchpilot.notify import RoutedNotifier
    from patchpilot.policy import Policy
    from patchpilot.ports import Claims, Clock, CloudFleet, DocumentStore, Queue, RunStore, Secrets
    from patchpilot.service import Service
    from patchpilot.triggers import TriggerDecision


class ServerlessSettings(Protocol):
    """The settings both runtimes read here (AwsEnvironment, AzureEnvironment)."""

    approval_secret: str | None
    approval_previous_secret: str | None
    slack_signing_secret: str | None
    slack_bot_token_secret: str | None
    approval_url: str | None


class ServerlessPorts(NamedTuple):
    """The ports of a serverless runtime, each built when first called (cache them)."""

    settings: ServerlessSettings
    log: Any
    clock: Clock
    store: Callable[[], RunStore]
    queue: Callable[[], Queue]
    secrets: Callable[[], Secrets | None]
    claims: Callable[[], Claims]
    fleet: Callable[[], CloudFleet]
    documents: Callable[[], DocumentStore | None]  # run and compliance reports, the overview page
    service: Callable[[], Service]
    policy: Callable[[], Policy]  # the deployed policy, read on each use
    # a decision when something else runs the policy's windows (Azure Update Manager); None: the timer does
    scheduled_elsewhere: Callable[[Policy], TriggerDecision | None] | None = None


class RuntimeParts(Protocol):
    """What a runtime builds, each on first use (AwsRuntime, AzureRuntime)."""

    @property
    def store(self) -> RunStore: ...
    @property
    def queue(self) -> Queue: ...
    @property
    def secrets(self) -> Secrets | None: ...
    @property
    def claims(self) -> Claims: ...
    @property
    def fleet(self) -> CloudFleet: ...
    @property
    def report_store(self) -> DocumentStore | None: ...
    @property
    def service(self) -> Service: ...
    def policy(self) -> Policy: ...


def ports_of(
    parts: RuntimeParts,
    settings: ServerlessSettings,
    log: Any,
    clock: Clock,
    scheduled_elsewhere: Callable[[Policy], TriggerDecision | None] | None = None,
) -> ServerlessPorts:
    """The ports over a runtime's parts: each read when first used, so that it is built then."""
    return ServerlessPorts(
        settings=settings,
        log=log,
        clock=clock,
        store=lambda: parts.store,
        queue=lambda: parts.queue,
        secrets=lambda: parts.secrets,
        claims=lambda: parts.claims,
        fleet=lambda: parts.fleet,
        documents=lambda: parts.report_store,
        service=lambda: parts.service,
        policy=parts.policy,
        scheduled_elsewhere=scheduled_elsewhere,
    )


class ServerlessRuntime:
    """The application of a serverless runtime over its ports (see the module's docstring); each
    part is built on first use."""

    slack_api_url: str | None = None  # the Slack Web API (None: slack.com); tests point it elsewhere

    def __init__(self, ports: ServerlessPorts) -> None:
        self.ports = ports

    # ------------------------------------------------------------ notices

    @functools.cached_property
    def notifier(self) -> RoutedNotifier:
        """Slack and Teams as the run's policy routes them (the log when it has no notifications);
        approval notices carry signed Approve and Reject links to each channel (`ApprovalLinks`)."""
        return self.routed

    @functools.cached_property
    def routed(self) -> RoutedNotifier:
        from patchpilot.adapters.serverless import ApprovalLinks, LogNotifier
        from patchpilot.notify import LazySecrets, RoutedNotifier

        ports = self.ports
        links = ApprovalLinks(self._load_run, self._approval_key, ports.settings.approval_url)
        return RoutedNotifier(
            LazySecrets(ports.secrets),
            self._load_run,
            LogNotifier(ports.log),
            claims=ports.claims,  # each notice sent once per channel, across containers
            clock=ports.clock,
            record=self._record_undelivered,  # in the run
            links=links,  # to the chat cards only
        )

    def _record_undelivered(self, event: NoticeUndelivered) -> None:
        """A notice not delivered, recorded in its run (the engine, which the timer's ticks without
        a run to start never load, is imported here)."""
        from patchpilot.service import apply_event

        ports = self.ports
        apply_event(ports.store(), ports.queue(), event, ports.clock.now)

    def _approval_key(self) -> str | None:
        from patchpilot.redact import PROCESS_SECRETS

        name, secrets = self.ports.settings.approval_secret, self.ports.secrets()
        key = secrets.get(name) if name and secrets is not None else None
        if key:
            PROCESS_SECRETS.add(key)  # never in a log line
        return key

    def _load_run(self, run_id: str) -> Run:
        return self.ports.store().load(run_id)  # the store is built when a notice is routed, not before

    # ------------------------------------------------------------ the timer

    @functools.cached_property
    def discovered(self) -> CachedDiscovery:
        """The policy's fleet, discovered at most once a minute in this (warm) container."""
        from patchpilot.app.discovery import CachedDiscovery

        return CachedDiscovery(self.ports.fleet)

    @functools.cached_property
    def overview(self) -> Overview:
        from patchpilot.app.overview import Overview

        return Overview(self.ports.documents, self.ports.store, self.ports.clock)

    @functools.cached_property
    def compliance(self) -> ComplianceTimer:
        from patchpilot.app.compliance_timer import ComplianceTimer

        ports = self.ports
        return ComplianceTimer(
            claims=ports.claims,
            assessor=ports.fleet,
            store=ports.store,
            documents=ports.documents,
            announcer=lambda: self.routed,
            discovered=self.discovered,
            overview=self.overview,
            log=ports.log,
        )

    @functools.cached_property
    def watch(self) -> MaintenanceWatch:
        from patchpilot.app.watch import MaintenanceWatch

        return MaintenanceWatch(
            source=self.ports.fleet, announcer=lambda: self.routed, discovered=self.discovered, overview=self.overview
        )

    @functools.cached_property
    def timer(self) -> Timer:
        from patchpilot.app.timer import Timer, never_elsewhere

        ports = self.ports
        return Timer(
            policy=ports.policy,
            clock=ports.clock,
            watch=self.watch,
            compliance=self.compliance,
            discovered=self.discovered,
            assessor=ports.fleet,
            announcer=lambda: self.routed,
            start=lambda: ports.service().start,
            log=ports.log,
            scheduled_elsewhere=ports.scheduled_elsewhere or never_elsewhere,
        )

    def trigger(self) -> TriggerDecision:
        """The timer (every 15 minutes): the maintenance watch and the compliance scans, the
        "run scheduled" heads-up, then the scheduled run when its window has begun (at most once)."""
        return self.timer.trigger()

    def scheduled_decision(self, policy: Policy, now: datetime) -> TriggerDecision:
        """Whether the timer starts the scheduled run, by the policy's kind (`Timer.scheduled_decision`)."""
        return self.timer.scheduled_decision(policy, now)

    def compliance_tick(self, policy: Policy, now: datetime) -> list[str]:
        """The compliance scans and reports due at `now` (`ComplianceTimer.tick`); never raises."""
        return self.compliance.tick(policy, now)

    def maintenance_tick(self, policy: Policy, now: datetime) -> list[str]:
        """The maintenance watch (`MaintenanceWatch.tick`): the ids of the notices sent; never raises."""
        return self.watch.tick(policy, now)

    def refresh_overview(self) -> str | None:
        """Write the overview page again (`Overview.refresh`); where it is. Logged, never raised."""
        return self.overview.refresh()

    # ------------------------------------------------------------ advisories

    def advisory(self, raw: object) -> list[str]:
        """Security advisories as delivered (`patchpilot.advisories.intake`): the emergency run each
        decides on is started, and every answer goes to the log and to on-call. InputError naming
        the field when a delivery is malformed. The fleet is discovered at most once a minute
        (`discovered`): Inspector sends one finding per instance, dozens at once, and the
        function runs one at a time (reserved concurrency 1), so a burst shares one discovery."""
        from patchpilot.advisories.intake import answer_deliveries
        from patchpilot.advisories.parsing import parse_payload

        ports = self.ports
        policy, now = ports.policy(), ports.clock.now()
        service = ports.service()
        answers = answer_deliveries(
            parse_payload(raw),
            policy,
            lambda: self.discovered(policy, now),  # a burst of findings shares one discovery
            ports.store(),
            service.start,
            lambda notice: self.routed.send(notice, policy.notifications),
            now,
            service.request_follow_up,
        )
        return [answer.text for answer in answers]

    # ------------------------------------------------------------ approvals

    @functools.cached_property
    def slack_groups(self) -> SlackGroups:
        """The members of the Slack user groups rings list, read with the bot token
        (PATCHPILOT_SLACK_BOT_TOKEN_SECRET), each kept 5 minutes in this (warm) container."""
        from patchpilot.chat_approvals import SLACK_API_URL, SlackGroups

        ports = self.ports
        url = self.slack_api_url or SLACK_API_URL
        return SlackGroups(ports.secrets, ports.settings.slack_bot_token_secret, ports.clock.now, url)

    @functools.cached_property
    def approvals(self) -> ApprovalEndpoints:
        from patchpilot.app.approvals import ApprovalEndpoints

        ports, settings = self.ports, self.ports.settings
        return ApprovalEndpoints(
            ports.store,
            ports.queue,
            ports.secrets,
            lambda: self.slack_groups,
            ports.clock,
            settings.approval_secret,
            settings.slack_signing_secret,
            settings.approval_previous_secret,
        )

    def preview_approval(self, token: str, caller: Approver | None = None) -> tuple[ApprovalRequest, str | None]:
        """What a signed approval link asks for, and why it cannot be decided now (None when it can)."""
        return self.approvals.preview(token, caller)

    def approve(self, token: str, caller: Approver | None = None) -> str:
        """A signed approval token: grant (or reject) the ring it names, if the run waits for
        exactly that and `caller` (a bare link by default) may decide it."""
        return self.approvals.decide(token, caller)

    def approve_from_slack(self, headers: Mapping[str, str], body: bytes, source: str = "") -> tuple[SlackAction, str]:
        """A Slack button press: verified (signature, age, replay), then decided like its token
        by the Slack user who pressed it; the answer for the presser. SlackRequestError when the
        request is refused, ApprovalLinkError when Slack approvals are not configured."""
        from patchpilot.chat_approvals import slack_decision

        secret = self.approvals.slack_signing_key()
        action = slack_decision(headers, body, secret, self.ports.clock.now(), self.ports.claims(), source)
        return action, self.approvals.decide_pressed(action.token, action.approver)

    def answer_approval(self, method: str, token: str, caller: Approver | None = None) -> ApprovalAnswer:
        """An approval link opened (GET) or confirmed (POST), answered (`app.approvals.answer_approval`)."""
        from patchpilot.app.approvals import answer_approval

        return answer_approval(self.preview_approval, self.approve, method, token, caller)

    def answer_slack(self, headers: Mapping[str, str], body: bytes, source: str = "") -> SlackAnswer[SlackAction]:
        """A Slack button press, answered (`app.approvals.answer_slack`)."""
        from patchpilot.app.approvals import answer_slack

        return answer_slack(lambda: self.approve_from_slack(headers, body, source))
