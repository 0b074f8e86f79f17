"""What the approval endpoints of both serverless runtimes do with a signed token or a Slack
button press: the same checks, the same decision, and the same answers, errors mapped once
(`answer_approval`, `answer_slack`): a bad link is a 403, an unknown run a 404, a signing secret
that is not configured or cannot be read (the vault, not the caller) a 503."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

from patchpilot.approvals import (
    ApprovalLinkError,
    ApprovalRequest,
    Approver,
    GroupMembers,
    NotAnApproverError,
    approval_question,
    approval_refusal,
    check_approver,
    signing_keys,
    verify_approval,
)
from patchpilot.ports import Clock, Queue, RunStore, Secrets, SecretUnavailableError, UnknownRunError

log = logging.getLogger("patchpilot.approvals")
UNAVAILABLE_LINKS = "Approval links cannot be checked right now; try again later."
UNAVAILABLE_SLACK = "Slack approvals are not available right now."


class ApprovalsNotConfiguredError(ApprovalLinkError):
    """The runtime has no secret to check this kind of approval with (a setting is missing)."""


class ApprovalEndpoints:
    """The approvals over the runtime's store, queue and secrets, each given as a function so
    that an endpoint builds only what it uses; `groups()` reads the members of the Slack user
    groups that rings list (built on first use)."""

    def __init__(
        self,
        store: Callable[[], RunStore],
        queue: Callable[[], Queue],
        secrets: Callable[[], Secrets | None],
        groups: Callable[[], GroupMembers],
        clock: Clock,
        approval_secret: str | None,
        slack_signing_secret: str | None,
        approval_previous_secret: str | None = None,
    ) -> None:
        self.store, self.queue, self.secrets, self.groups = store, queue, secrets, groups
        self.clock = clock
        self.approval_secret = approval_secret
        self.slack_signing_secret = slack_signing_secret
        self.approval_previous_secret = approval_previous_secret

    def _secret(self, name: str | None, what: str, setting: str) -> str:
        store = self.secrets()
        if not name or store is None:
            raise ApprovalsNotConfiguredError(f"{what} are not configured ({setting})")
        return store.get(name)

    def slack_signing_key(self) -> str:
        """The Slack app's signing secret; ApprovalsNotConfiguredError without one."""
        return self._secret(self.slack_signing_secret, "Slack approvals", "PATCHPILOT_SLACK_SIGNING_SECRET")

    def _keys(self) -> list[str]:
        """The approval keys that verify a link: the current one, and the previous one during a
        rotation (PATCHPILOT_APPROVAL_PREVIOUS_SECRET; unreadable: logged, the current one alone)."""
        current = self._secret(self.approval_secret, "approval links", "PATCHPILOT_APPROVAL_SECRET")
        previous = None
        if self.approval_previous_secret:
            try:
                previous = self._secret(self.approval_previous_secret, "", "")
            except Exception as error:  # removed after the rotation, the vault throttling
                log.warning("the previous approval key is not read: %s", type(error).__name__)
        return signing_keys(current, previous)

    def preview(self, token: str, caller: Approver | None = None) -> tuple[ApprovalRequest, str | None]:
        """What a signed token asks for, and why it cannot be decided now (None when it can);
        ApprovalLinkError when the token is invalid or expired, or links are not configured;
        NotAnApproverError (logged) when the ring names its approvers and `caller` (a bare link
        by default) is not one of them."""
        request = verify_approval(token, self._keys())
        run = self.store().load(request.run_id)
        refusal = approval_refusal(run, request)
        if refusal is None:
            approver = self.approver(request, caller)
            try:
                # the group reader (slack_sdk's client) is built only if a Slack group is looked up
                check_approver(run, request.ring, approver, lambda group: self.groups()(group))
            except NotAnApproverError as error:
                log.warning("approval of ring %s of run %s refused: %s", request.ring, run.run_id, error)
                raise
        return request, refusal

    @staticmethod
    def approver(request: ApprovalRequest, caller: Approver | None) -> Approver:
        """Who decides: the authenticated caller, else the link's recipient (the token's channel)."""
        caller = caller or Approver()
        return caller if caller.authenticated else caller._replace(kind="link", id=request.to)

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

    def decide_pressed(self, token: str, presser: Approver) -> str:
        """A verified Slack button press, decided like its token by the Slack user who pressed
        it: the answer for the presser (an expired token or an unknown run is an answer too)."""
        try:
            return self.decide(token, presser)
        except ApprovalLinkError as error:  # the button's token expired: the presser is told
            return str(error)
        except UnknownRunError:
            return "this button names a run that does not exist"


class ApprovalAnswer(NamedTuple):
    """What an approval endpoint answers: a status, a text and, to ask before deciding, the form
    that POSTs the token back (`form_token`, `button`); `run_id` once the token named one;
    `problem`, for the log only, why the answer is a 503."""

    status: int
    text: str
    form_token: str | None = None
    button: str = "Approve"
    run_id: str = ""
    decided: bool = False  # an approval or a rejection was made (the endpoint logs it)
    problem: str = ""


def answer_approval(
    preview: Callable[[str, Approver | None], tuple[ApprovalRequest, str | None]],
    approve: Callable[[str, Approver | None], str],
    method: str,
    token: str,
    caller: Approver | None = None,
) -> ApprovalAnswer:
    """An approval link opened (GET: only asks, link scanners open links) or confirmed (POST:
    decides) by `caller` (who the endpoint says it is: an authenticated identity and the source
    address). Refusals are answers: 400 without a token, 403 for a bad link or someone who may not
    approve, 404 for an unknown run, 503 when the signing key cannot be read; other errors are
    raised."""
    if not token:
        return ApprovalAnswer(400, "This approval link has no token.")
    try:
        request, refusal = preview(token, caller)
        if refusal is not None:
            return ApprovalAnswer(200, refusal, run_id=request.run_id)
        if method != "POST":
            button = request.decision.capitalize()
            question = approval_question(request)
            return ApprovalAnswer(200, question, form_token=token, button=button, run_id=request.run_id)
        text = approve(token, caller)
    except SecretUnavailableError as error:  # the vault, not the link: the operator fixes it
        return ApprovalAnswer(503, UNAVAILABLE_LINKS, problem=str(error))
    except ApprovalLinkError as error:
        return ApprovalAnswer(403, str(error))
    except UnknownRunError:
        return ApprovalAnswer(404, "This approval link names a run that does not exist.")
    return ApprovalAnswer(200, text, run_id=request.run_id, decided=True)


Action = TypeVar("Action")


class SlackAnswer(NamedTuple, Generic[Action]):
    """What the Slack endpoint answers Slack: 200 once decided (the presser is told `text` in
    Slack, `action` says where), 401 for a request that is not a genuine, fresh press (nothing
    decided), 503 when Slack approvals are not configured or their secret cannot be read;
    `problem` is for the log."""

    status: int
    text: str = ""
    action: Action | None = None
    problem: str = ""


def answer_slack(press: Callable[[], tuple[Action, str]]) -> SlackAnswer[Action]:
    """The answer to a Slack button press that `press()` verifies and decides."""
    try:
        action, text = press()
    except (ApprovalsNotConfiguredError, SecretUnavailableError) as error:  # the settings or the vault
        return SlackAnswer(503, UNAVAILABLE_SLACK, problem=str(error))
    except ApprovalLinkError as error:  # not from Slack, too old, replayed (SlackRequestError)
        return SlackAnswer(401, str(error), problem=str(error))
    return SlackAnswer(200, text, action)
