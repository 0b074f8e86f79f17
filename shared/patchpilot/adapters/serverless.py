"""What the two serverless runtimes (Lambda, Azure Functions) share: the wall clock, the
notifier that writes to the structured log when no Slack or Teams channel is routed, and the notifier
that writes a run's report when the run ends."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from patchpilot.approvals import ApprovalRequest, Approver
    from patchpilot.chat_approvals import SlackAction, SlackGroups
    from patchpilot.engine.messages import Notify
    from patchpilot.engine.run import Run
    from patchpilot.inventory import Instance
    from patchpilot.notify import RoutedNotifier
    from patchpilot.notify.routing import Links
    from patchpilot.policy import Policy
    from patchpilot.ports import (
        Claims,
        Clock,
        DiscoveryResult,
        DocumentStore,
        Notifier,
        PatchAssessor,
        Queue,
        RunStore,
        Secrets,
    )
    from patchpilot.service import Service
    from patchpilot.triggers import TriggerDecision

log = logging.getLogger("patchpilot.notify")
approvals_log = logging.getLogger("patchpilot.approvals")
watch_log = logging.getLogger("patchpilot.maintenance")
RUN_END_TOPICS = frozenset({"run_finished", "run_halted"})
# The overview page is written again at these notices: a run's start, each ring's end, an approval request, its end.
OVERVIEW_TOPICS = RUN_END_TOPICS | {"run_started", "ring_finished", "approval_needed"}
WATCH_READS = "cron(0 * * * ? *)"  # the maintenance watch reads the clouds hourly (UTC), not every tick
CLAIM_MARGIN = timedelta(days=7)
DISCOVERY_TTL = timedelta(seconds=60)  # how long one discovery of the fleet serves (ServerlessRuntime._discovered)


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


class ApprovalEndpoints:
    """What the approval endpoints of both serverless runtimes do with a signed token or a Slack
    button press: the same checks and the same decision, over the runtime's store, queue, secrets
    and claims. Each is given as a function, so that an endpoint builds only what it uses."""

    def __init__(
        self,
        store: Callable[[], RunStore],
        queue: Callable[[], Queue],
        secrets: Callable[[], Secrets | None],
        claims: Callable[[], Claims],
        clock: Clock,
        approval_secret: str | None,
        slack_signing_secret: str | None,
        approval_previous_secret: str | None = None,
        slack_bot_token_secret: str | None = None,
        slack_api_url: str | None = None,
    ) -> None:
        self.store, self.queue, self.secrets, self.claims = store, queue, secrets, claims
        self.clock = clock
        self.approval_secret = approval_secret
        self.slack_signing_secret = slack_signing_secret
        self.approval_previous_secret = approval_previous_secret
        self.slack_bot_token_secret = slack_bot_token_secret
        self.slack_api_url = slack_api_url

    @functools.cached_property
    def slack_groups(self) -> SlackGroups:
        """The members of the Slack user groups rings list, read with the bot token
        (PATCHPILOT_SLACK_BOT_TOKEN_SECRET), each kept 5 minutes in this (warm) container."""
        from patchpilot.chat_approvals import SLACK_API_URL, SlackGroups

        url = self.slack_api_url or SLACK_API_URL
        return SlackGroups(self.secrets, self.slack_bot_token_secret, self.clock.now, url)

    def _secret(self, name: str | None, what: str, setting: str) -> str:
        from patchpilot.approvals import ApprovalLinkError

        store = self.secrets()
        if not name or store is None:
            raise ApprovalLinkError(f"{what} are not configured ({setting})")
        return store.get(name)

    def _keys(self) -> list[str]:
        """The approval keys that verify a link: the current one, and the previous one during a
        rotation (PATCHPILOT_APPROVAL_PREVIOUS_SECRET; unreadable: logged, the current one alone)."""
        from patchpilot.approvals import signing_keys

        current = self._secret(self.approval_secret, "approval links", "PATCHPILOT_APPROVAL_SECRET")
        previous = None
        if self.approval_previous_secret:
            try:
                previous = self._secret(self.approval_previous_secret, "", "")
            except Exception as error:  # removed after the rotation, the vault throttling
                approvals_log.warning("the previous approval key is not read: %s", type(error).__name__)
        return signing_keys(current, previous)

    def preview(self, token: str, caller: Approver | None = None) -> tuple[ApprovalRequest, str | None]:
        """What a signed token asks for, and why it cannot be decided now (None when it can);
        ApprovalLinkError when the token is invalid or expired, or links are not configured;
        NotAnApproverError (logged) when the ring names its approvers and `caller` (a bare link
        by default) is not one of them."""
        from patchpilot.approvals import NotAnApproverError, approval_refusal, check_approver, verify_approval

        request = verify_approval(token, self._keys())
        run = self.store().load(request.run_id)
        refusal = approval_refusal(run, request)
        if refusal is None:
            approver = self.approver(request, caller)
            try:
                check_approver(run, request.ring, approver, self.slack_groups)
            except NotAnApproverError as error:
                approvals_log.warning("approval of ring %s of run %s refused: %s", request.ring, run.run_id, error)
                raise
        return request, refusal

    @staticmethod
    def approver(request: ApprovalRequest, caller: Approver | None) -> Approver:
        """Who decides: the authenticated caller, else the link's recipient (the token's channel)."""
        from dataclasses import replace

        from patchpilot.approvals import Approver

        caller = caller or Approver()
        return caller if caller.authenticated else replace(caller, kind="link", id=request.to)

    def decide(self, token: str, caller: Approver | None = None) -> str:
        """Grant or reject the ring a signed token names, if the run waits for exactly that and
        `caller` may decide it; the decision records who (`Approver`) and from where."""
        from patchpilot.service import grant_approval

        request, refusal = self.preview(token, caller)
        if refusal:
            return refusal
        approver = self.approver(request, caller)
        reject = request.decision == "reject"
        store, queue, run_id = self.store(), self.queue(), request.run_id
        by, source, now = str(approver), approver.source, self.clock.now()
        return grant_approval(store, queue, run_id, by=by, reject=reject, source=source, now=now)

    def decide_from_slack(self, headers: Mapping[str, str], body: bytes, source: str = "") -> tuple[SlackAction, str]:
        """A Slack button press: verified (signature, age, replay), then decided like its token
        by the Slack user who pressed it; the answer for the presser. SlackRequestError when the
        request is refused, ApprovalLinkError when Slack approvals are not configured."""
        from patchpilot.approvals import ApprovalLinkError
        from patchpilot.chat_approvals import slack_decision
        from patchpilot.ports import UnknownRunError

        secret = self._secret(self.slack_signing_secret, "Slack approvals", "PATCHPILOT_SLACK_SIGNING_SECRET")
        action = slack_decision(headers, body, secret, self.clock.now(), self.claims(), source)
        try:
            return action, self.decide(action.token, action.approver)
        except ApprovalLinkError as error:  # the button's token expired: the presser is told
            return action, str(error)
        except UnknownRunError:
            return action, "this button names a run that does not exist"


@dataclass(frozen=True)
class ApprovalAnswer:
    """What an approval endpoint answers: a status, a text and, to ask before deciding, the form
    that POSTs the token back (`form_token`, `button`); `run_id` once the token named one."""

    status: int
    text: str
    form_token: str | None = None
    button: str = "Approve"
    run_id: str = ""
    decided: bool = False  # an approval or a rejection was made (the endpoint logs it)


class ServerlessSettings(Protocol):
    """The settings both runtimes read here (AwsEnvironment, AzureEnvironment)."""

    approval_secret: str | None
    approval_previous_secret: str | None
    slack_signing_secret: str | None
    slack_bot_token_secret: str | None
    approval_url: str | None


class Discovers(Protocol):
    def discover(self, policy: Policy) -> DiscoveryResult: ...


if TYPE_CHECKING:
    from patchpilot.ports import MaintenanceSource

    class CloudFleet(Discovers, PatchAssessor, MaintenanceSource, Protocol):
        """The fleet of a serverless runtime: it discovers, assesses and reports the cloud's
        maintenance (Ec2SsmFleet, AzureFleet)."""


CLAIM_HOLD = timedelta(days=2)  # a compliance slot's claim outlasts every retry of its tick


class ServerlessRuntime:
    """What the AWS and Azure runtimes do alike over their own adapters: notices (routed to Slack
    and Teams, approval links added), approval endpoints, advisories and the maintenance watch. A
    runtime provides the members declared below (each built on first use)."""

    if TYPE_CHECKING:
        env: ServerlessSettings
        log: Any
        clock: Clock

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

    @functools.cached_property
    def notifier(self) -> RoutedNotifier:
        """Slack and Teams as the run's policy routes them (the log when it has no notifications);
        approval notices carry signed Approve and Reject links to each channel (`ApprovalLinks`)."""
        return self.routed

    @functools.cached_property
    def routed(self) -> RoutedNotifier:
        from patchpilot.notify import LazySecrets, RoutedNotifier
        from patchpilot.service import apply_event

        links = ApprovalLinks(self._load_run, self._approval_key, self.env.approval_url)

        return RoutedNotifier(
            LazySecrets(lambda: self.secrets),
            self._load_run,
            LogNotifier(self.log),
            claims=lambda: self.claims,  # each notice sent once per channel, across containers
            clock=self.clock,
            record=lambda event: apply_event(self.store, self.queue, event, self.clock.now),  # recorded in the run
            links=links,  # to the chat cards only
        )

    def _approval_key(self) -> str | None:
        from patchpilot.redact import PROCESS_SECRETS

        name, secrets = self.env.approval_secret, self.secrets
        key = secrets.get(name) if name and secrets is not None else None
        if key:
            PROCESS_SECRETS.add(key)  # never in a log line
        return key

    def _load_run(self, run_id: str) -> Run:
        return self.store.load(run_id)  # the store is built when a notice is routed, not before

    def advisory(self, raw: object) -> list[str]:
        """Security advisories as delivered (`patchpilot.advisories.intake`): the emergency run each
        decides on is started, and every answer goes to the log and to on-call. InputError naming
        the field when a delivery is malformed. The fleet is discovered at most once a minute
        (`_discovered`): Inspector sends one finding per instance, dozens at once, and the
        function runs one at a time (reserved concurrency 1), so a burst shares one discovery."""
        from patchpilot.advisories.intake import take_advisories

        policy, now = self.policy(), self.clock.now()
        answers = take_advisories(
            raw,
            policy,
            lambda: self._discovered(policy, now),  # a burst of findings shares one discovery
            self.store,
            self.service.start,
            lambda notice: self.routed.send(notice, policy.notifications),
            now,
            self.service.request_follow_up,
        )
        return [answer.text for answer in answers]

    def maintenance_tick(self, policy: Policy, now: datetime) -> list[str]:
        """The maintenance watch on the timer (docs/maintenance-watch.md): once an hour, and at
        the policy's digest times, read what the cloud has scheduled; send an alert for each item
        due before the next window, once per item and due time, and the digest once per digest
        time (the routed notifier's durable claims, across containers; a post that failed is
        tried again at the next read). The ids of the notices sent;
        a watch that fails is logged and never stops the timer's other work."""
        from patchpilot.maintenance.watch import alert_notices, digest_notice, watch_view
        from patchpilot.policy.schedule import parse_aws_cron
        from patchpilot.reports.overview import maintenance_summary
        from patchpilot.triggers import fired_within

        settings = policy.maintenance_watch
        if settings is None:
            return []
        sent: list[str] = []
        try:
            digest_at = fired_within(settings.digest, policy.zone_for(settings.timezone), now)
            if digest_at is None and fired_within(parse_aws_cron(WATCH_READS), ZoneInfo("UTC"), now) is None:
                return []  # between two hourly reads: no API calls
            instances = self._discovered(policy, now)
            view = watch_view(self.fleet.upcoming_maintenance(policy, instances, now), policy, instances, now)
            # The routed notifier sends each notice once per channel across containers, and gives
            # a failed post up so that the next read tries again; a delivered one is remembered
            # beyond what it is about: the item's end (or due time), or the digest time.
            notices = [
                (notice, max(w.item.ends_at or now, w.due_at or now) + CLAIM_MARGIN)
                for w, notice in zip(view.due, alert_notices(view), strict=True)
            ]
            if digest_at is not None:
                notices.append((digest_notice(view, digest_at), digest_at + CLAIM_MARGIN))
            for notice, until in notices:
                self.routed.send(notice, policy.notifications, keep_until=until)
                sent.append(notice.id)
            for what, reason in view.unavailable:
                watch_log.warning("policy %s: not read: %s: %s", policy.name, what, reason)
        except Exception:  # a cloud or the claims table unreachable: logged, and the timer goes on
            watch_log.exception("the maintenance watch of policy %s failed", policy.name)
            return sent
        self._keep_for_overview(lambda: [maintenance_summary(view)])
        return sent

    @functools.cached_property
    def approvals(self) -> ApprovalEndpoints:
        return ApprovalEndpoints(
            lambda: self.store,
            lambda: self.queue,
            lambda: self.secrets,
            lambda: self.claims,
            self.clock,
            self.env.approval_secret,
            self.env.slack_signing_secret,
            self.env.approval_previous_secret,
            self.env.slack_bot_token_secret,
            self.slack_api_url,
        )

    slack_api_url: str | None = None  # the Slack Web API (None: slack.com); tests point it elsewhere

    def preview_approval(self, token: str, caller: Approver | None = None) -> tuple[ApprovalRequest, str | None]:
        """What a signed approval link asks for, and why it cannot be decided now (None when it can)."""
        return self.approvals.preview(token, caller)

    def approve(self, token: str, caller: Approver | None = None) -> str:
        """A signed approval token: grant (or reject) the ring it names, if the run waits for
        exactly that and `caller` (a bare link by default) may decide it."""
        return self.approvals.decide(token, caller)

    def approve_from_slack(self, headers: Mapping[str, str], body: bytes, source: str = "") -> tuple[SlackAction, str]:
        """A Slack button press, verified and decided (`ApprovalEndpoints.decide_from_slack`)."""
        return self.approvals.decide_from_slack(headers, body, source)

    def answer_approval(self, method: str, token: str, caller: Approver | None = None) -> ApprovalAnswer:
        """An approval link opened (GET: only asks, link scanners open links) or confirmed (POST:
        decides) by `caller` (who the endpoint says it is: an authenticated identity and the
        source address). Refusals are answers (403 for a bad link or someone who may not
        approve); other errors are raised."""
        from patchpilot.approvals import ApprovalLinkError, approval_question
        from patchpilot.ports import UnknownRunError

        if not token:
            return ApprovalAnswer(400, "This approval link has no token.")
        try:
            request, refusal = self.preview_approval(token, caller)
            if refusal is not None:
                return ApprovalAnswer(200, refusal, run_id=request.run_id)
            if method != "POST":
                button = request.decision.capitalize()
                question = approval_question(request)
                return ApprovalAnswer(200, question, form_token=token, button=button, run_id=request.run_id)
            text = self.approve(token, caller)
        except ApprovalLinkError as error:
            return ApprovalAnswer(403, str(error))
        except UnknownRunError:
            return ApprovalAnswer(404, "This approval link names a run that does not exist.")
        return ApprovalAnswer(200, text, run_id=request.run_id, decided=True)

    # ------------------------------------------------------------ the timer: policy kinds, compliance

    def trigger(self) -> TriggerDecision:
        """The timer (every 15 minutes): the maintenance watch and the compliance scans, the
        "run scheduled" heads-up, then the scheduled run when its window has begun (at most once)."""
        policy, now = self.policy(), self.clock.now()
        self.maintenance_tick(policy, now)  # hourly reads, alerts and digests (never raises)
        self.compliance_tick(policy, now)  # never raises
        held = self.scheduled_elsewhere(policy)
        if held is not None:
            return held
        decision = self.scheduled_decision(policy, now)  # by the policy's kind
        self.routed.announce(policy, now)  # "run scheduled", a while before a window
        if decision.start:
            # every instance found, the unreachable ones included: planned once, skipped at the probe
            self.service.start(decision.run_id, policy, self._discovered(policy, now))
        return decision

    def scheduled_elsewhere(self, policy: Policy) -> TriggerDecision | None:
        """A decision when something else than this timer runs the policy's windows (Azure Update
        Manager schedules); None when the timer does."""
        return None

    def scheduled_decision(self, policy: Policy, now: datetime) -> TriggerDecision:
        """Whether the timer starts the scheduled run, by the policy's kind: a frozen or an
        emergency policy never does; a non-periodic one skips a window in which none of its
        machines lacks anything (and says so, once per window: the notice id is the window's, claimed)."""
        from patchpilot.triggers import TriggerDecision, scheduled_trigger

        if policy.kind == "frozen":
            return TriggerDecision(False, f"policy {policy.name} is frozen: never patched, no scheduled run")
        if policy.kind == "emergency":
            return TriggerDecision(
                False, f"policy {policy.name} is an emergency policy: only advisories start its runs"
            )
        decision = scheduled_trigger(policy, now)
        if not decision.start or policy.kind != "non_periodic":
            return decision
        from patchpilot.compliance.render import skipped_notice
        from patchpilot.compliance.report import build_view, nothing_pending, pending_summary

        try:
            instances = self._managed(policy, self._discovered(policy, now))
            view = build_view(policy, instances, self.fleet.patch_states(instances), now)
        except Exception as error:  # the window would be lost (the next tick is past it): patch
            self.log.warning("policy %s: pending patches not read (%s): the run starts", policy.name, error)
            return decision
        if not nothing_pending(view):
            return decision
        notice = skipped_notice(decision.run_id, policy.name, pending_summary(view))
        # Sent once per channel across containers: a retried tick in another one says it once.
        until = (decision.window.end if decision.window else now) + CLAIM_MARGIN
        self.routed.send(notice, policy.notifications, keep_until=until)
        return TriggerDecision(False, f"skipped: {pending_summary(view)}", decision.run_id, decision.window)

    _discovery: tuple[Policy, datetime, list[Instance]] | None = None

    def _discovered(self, policy: Policy, now: datetime) -> list[Instance]:
        """The policy's fleet, discovered at most once per DISCOVERY_TTL of the runtime clock in
        this (warm) container: a timer tick's maintenance watch, compliance scan and report,
        non-periodic check and the run it starts share one discovery, and so do the advisories of
        a burst. A changed policy, or a clock before the discovery, discovers again."""
        cached = self._discovery
        if cached is None or cached[0] != policy or not timedelta(0) <= now - cached[1] < DISCOVERY_TTL:
            cached = self._discovery = (policy, now, self.fleet.discover(policy).instances)
        return cached[2]

    @staticmethod
    def _managed(policy: Policy, instances: list[Instance]) -> list[Instance]:
        """The instances the policy covers: in a ring, or kept out of one by the policy (exposed)."""
        from patchpilot.planning import NO_RING, assign

        members, excluded = assign(policy, instances)
        return [i for group in members.values() for i in group] + [e.instance for e in excluded if e.reason != NO_RING]

    def compliance_tick(self, policy: Policy, now: datetime) -> list[str]:
        """The compliance timer (`policy.compliance`): when `scan` fired within the timer period,
        a fresh assessment of the policy's machines; `report_after` later, the report (Markdown,
        HTML, CSV beside the run reports) and its `compliance_report` notice. Each slot is claimed
        once (`compliance-scan:<policy>:<slot>`, `compliance-report:<policy>:<slot>`), so timers
        that fire twice scan and report once. What it did, for the log; it never raises (the
        scheduled run must still start)."""
        settings = policy.compliance
        if settings is None:
            return []
        from patchpilot.triggers import fired_within

        zone = policy.zone_for(settings.timezone)
        done: list[str] = []
        try:
            scan = fired_within(settings.scan, zone, now)
            if scan is not None and self.claims.claim(_slot_key("compliance-scan", policy, scan), now + CLAIM_HOLD):
                done.append(self._compliance_scan(policy, scan, now))
            report = fired_within(settings.scan, zone, now - settings.report_after)
            if report is not None and self.claims.claim(
                _slot_key("compliance-report", policy, report), now + CLAIM_HOLD
            ):
                done.append(self._compliance_report(policy, report, now))
        except Exception as error:  # a cloud API down: logged, the next slot tries again
            self.log.warning("compliance timer of policy %s failed: %s", policy.name, error)
            done.append(f"compliance timer failed: {error}")
        for line in done:
            self.log.info(line)
        return done

    def _compliance_scan(self, policy: Policy, slot: datetime, now: datetime) -> str:
        instances = self._managed(policy, self._discovered(policy, now))
        token = f"compliance-{policy.name}-{slot.astimezone(UTC):%Y%m%d-%H%M}"  # letters, digits, . _ -
        started = self.fleet.start_assessment(instances, token)
        refused = f"; not started on {len(started.refused)}" if started.refused else ""
        return f"compliance scan of policy {policy.name} started on {started.started} machines{refused}"

    def _compliance_report(self, policy: Policy, slot: datetime, now: datetime) -> str:
        from patchpilot.compliance.render import compliance_notice, documents, report_name
        from patchpilot.compliance.report import LastRun, LeftFailed, build_view, last_patched, left_failed, recent_runs
        from patchpilot.reports.overview import compliance_summaries

        instances = self._discovered(policy, now)
        states = self.fleet.patch_states(instances)
        last_runs: dict[str, LastRun] | None = None
        broken: dict[str, LeftFailed] | None = None
        try:
            runs = recent_runs(self.store, policy.name)
            last_runs, broken = last_patched(runs, policy.name), left_failed(runs, policy.name)
        except Exception as error:  # the run store down: the report goes out without the last runs
            self.log.warning("compliance report of policy %s without last runs: %s", policy.name, error)
        view = build_view(policy, instances, states, now, last_runs, broken)
        store, location = self.report_store, ""
        if store is not None:
            name = report_name(view)
            for suffix, text, kind in documents(view):
                written = store.write(f"{name}.{suffix}", text, kind)
                location = written if suffix == "html" else location
            self._keep_for_overview(lambda: compliance_summaries(view, f"{name}.html"))
        notice = compliance_notice(view, location, notice_id=f"{_slot_key('compliance-report', policy, slot)}:notify")
        self.routed.send(notice, policy.notifications)
        return notice.text.splitlines()[0] + (f" Report: {location}" if location else " (no report store)")

    def _keep_for_overview(self, summaries: Callable[[], list[tuple[str, str]]]) -> None:
        """Write the `summaries` (name, JSON) beside the reports, then the overview page again.
        Logged, never raised: the report or the read it follows stands."""
        store = self.report_store
        if store is None:
            return
        try:
            for name, text in summaries():
                store.write(name, text, "application/json")
        except Exception as error:  # storage down: the page keeps the last summary
            log.warning("the overview's summaries were not written: %s", error)
            return
        self.refresh_overview()

    def refresh_overview(self) -> str | None:
        """Write the overview page (`index.html` beside the reports) again from the run table
        (its newest runs) and the summaries kept there; where it is. Logged, never raised."""
        store = self.report_store
        if store is None:
            return None
        from patchpilot.reports.overview import refresh_overview, report_steps, stored_report

        try:
            return refresh_overview(store, self.store, self.clock.now(), report_steps, stored_report)
        except Exception as error:  # the run table or the store down, a summary that does not render
            log.warning("the overview page was not written: %s", error)
            return None


def _slot_key(kind: str, policy: Policy, slot: datetime) -> str:
    """`<kind>:<policy>:<slot, UTC>`: the same from every timer that sees the slot."""
    return f"{kind}:{policy.name}:{slot.astimezone(UTC):%Y%m%d-%H%M}"
