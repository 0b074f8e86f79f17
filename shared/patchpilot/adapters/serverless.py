"""What the two serverless runtimes (Lambda, Azure Functions) share: the wall clock, the
notifier that writes to the structured log when no Slack or Teams channel is routed, and the notifier
that writes a run's report when the run ends."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from patchpilot.approvals import ApprovalRequest
    from patchpilot.chat_approvals import SlackAction
    from patchpilot.engine.messages import Notify
    from patchpilot.engine.run import Run
    from patchpilot.notify import RoutedNotifier
    from patchpilot.policy import Policy
    from patchpilot.ports import Claims, Clock, DiscoveryResult, Notifier, Queue, RunStore, Secrets
    from patchpilot.service import Service

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
    ) -> None:
        self.store, self.queue, self.secrets, self.claims = store, queue, secrets, claims
        self.clock = clock
        self.approval_secret = approval_secret
        self.slack_signing_secret = slack_signing_secret

    def _secret(self, name: str | None, what: str, setting: str) -> str:
        from patchpilot.approvals import ApprovalLinkError

        store = self.secrets()
        if not name or store is None:
            raise ApprovalLinkError(f"{what} are not configured ({setting})")
        return store.get(name)

    def preview(self, token: str) -> tuple[ApprovalRequest, str | None]:
        """What a signed token asks for, and why it cannot be decided now (None when it can);
        ApprovalLinkError when the token is invalid or expired, or links are not configured."""
        from patchpilot.approvals import approval_refusal, verify_approval

        key = self._secret(self.approval_secret, "approval links", "PATCHPILOT_APPROVAL_SECRET")
        request = verify_approval(token, key)
        return request, approval_refusal(self.store().load(request.run_id), request)

    def decide(self, token: str, by: str = "approval link") -> str:
        """Grant or reject the ring a signed token names, if the run waits for exactly that."""
        from patchpilot.service import grant_approval

        request, refusal = self.preview(token)
        reject = request.decision == "reject"
        return refusal or grant_approval(self.store(), self.queue(), request.run_id, by=by, reject=reject)

    def decide_from_slack(self, headers: Mapping[str, str], body: bytes) -> tuple[SlackAction, str]:
        """A Slack button press: verified (signature, age, replay), then decided like its token;
        the answer for the presser. SlackRequestError when the request is refused,
        ApprovalLinkError when Slack approvals are not configured."""
        from patchpilot.approvals import ApprovalLinkError
        from patchpilot.chat_approvals import slack_decision
        from patchpilot.ports import UnknownRunError

        secret = self._secret(self.slack_signing_secret, "Slack approvals", "PATCHPILOT_SLACK_SIGNING_SECRET")
        action = slack_decision(headers, body, secret, self.clock.now(), self.claims())
        try:
            return action, self.decide(action.token, by=action.user)
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
    slack_signing_secret: str | None
    approval_url: str | None


class Discovers(Protocol):
    def discover(self, policy: Policy) -> DiscoveryResult: ...


class ServerlessRuntime:
    """What the AWS and Azure runtimes do alike over their own adapters: notices (routed to Slack
    and Teams, approval links added), approval endpoints and advisories. A runtime provides the
    members declared below (each built on first use)."""

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
        def fleet(self) -> Discovers: ...
        @property
        def service(self) -> Service: ...
        def policy(self) -> Policy: ...

    @functools.cached_property
    def notifier(self) -> ApprovalLinksNotifier:
        """Slack and Teams as the run's policy routes them (the log when it has no notifications);
        approval notices carry signed Approve and Reject links."""
        return ApprovalLinksNotifier(self.routed, self._load_run, self._approval_key, self.env.approval_url)

    @functools.cached_property
    def routed(self) -> RoutedNotifier:
        from patchpilot.notify import LazySecrets, RoutedNotifier

        return RoutedNotifier(
            LazySecrets(lambda: self.secrets),
            self._load_run,
            LogNotifier(self.log),
            claims=lambda: self.claims,  # each notice sent once per channel, across containers
            clock=self.clock,
            record=lambda event: self.queue.publish([event]),  # undelivered: recorded in the run
        )

    def _approval_key(self) -> str | None:
        name, secrets = self.env.approval_secret, self.secrets
        return secrets.get(name) if name and secrets is not None else None

    def _load_run(self, run_id: str) -> Run:
        return self.store.load(run_id)  # the store is built when a notice is routed, not before

    def advisory(self, raw: object) -> list[str]:
        """Security advisories as delivered (`patchpilot.advisories.intake`): the emergency run each
        decides on is started, and every answer goes to the log and to on-call. InputError naming
        the field when a delivery is malformed."""
        from patchpilot.advisories.intake import take_advisories

        policy = self.policy()
        answers = take_advisories(
            raw,
            policy,
            lambda: self.fleet.discover(policy).instances,
            self.store,
            self.service.start,
            lambda notice: self.routed.send(notice, policy.notifications),
            self.clock.now(),
        )
        return [answer.text for answer in answers]

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
        )

    def preview_approval(self, token: str) -> tuple[ApprovalRequest, str | None]:
        """What a signed approval link asks for, and why it cannot be decided now (None when it can)."""
        return self.approvals.preview(token)

    def approve(self, token: str, by: str = "approval link") -> str:
        """A signed approval token: grant (or reject) the ring it names, if the run waits for exactly that."""
        return self.approvals.decide(token, by)

    def approve_from_slack(self, headers: Mapping[str, str], body: bytes) -> tuple[SlackAction, str]:
        """A Slack button press, verified and decided (`ApprovalEndpoints.decide_from_slack`)."""
        return self.approvals.decide_from_slack(headers, body)

    def answer_approval(self, method: str, token: str) -> ApprovalAnswer:
        """An approval link opened (GET: only asks, link scanners open links) or confirmed (POST:
        decides). Refusals are answers (403 for a bad link); other errors are raised."""
        from patchpilot.approvals import ApprovalLinkError, approval_question
        from patchpilot.ports import UnknownRunError

        if not token:
            return ApprovalAnswer(400, "This approval link has no token.")
        try:
            request, refusal = self.preview_approval(token)
            if refusal is not None:
                return ApprovalAnswer(200, refusal, run_id=request.run_id)
            if method != "POST":
                button = request.decision.capitalize()
                question = approval_question(request)
                return ApprovalAnswer(200, question, form_token=token, button=button, run_id=request.run_id)
            text = self.approve(token)
        except ApprovalLinkError as error:
            return ApprovalAnswer(403, str(error))
        except UnknownRunError:
            return ApprovalAnswer(404, "This approval link names a run that does not exist.")
        return ApprovalAnswer(200, text, run_id=request.run_id, decided=True)
