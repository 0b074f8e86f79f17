"""Signed, expiring approval links: the way to approve a ring from a Teams card or an e-mail.

A link carries the run id, the ring it opens and the channel it was sent to, signed with a
secret (HMAC-SHA256 by itsdangerous) and stamped; it is refused when tampered with, signed with
another secret or with SHA-1 (the old format), or older than its lifetime. During a key rotation
the previous key still verifies (links are always signed with the current one). Granting is
idempotent (one decision per ring gate), so a link clicked twice approves once.

Who decided is an `Approver`: the Slack user who pressed a button, the identity an authenticated
endpoint vouches for (AWS IAM, Azure Easy Auth), or else the link's recipient; with the request's
source address. A ring's `approvers` (policy) admit only those Slack users (listed by user id,
or members of a listed Slack user group) or authenticated identities: a bare link can be
forwarded, so with an allow-list it is not enough. Group membership is read from Slack for a
Slack user only (an IAM or Entra identity is in no Slack group); when it cannot be read, the
approval is refused.

The endpoints (AWS Function URL, Azure HTTP function) answer GET with a page that only says what
the link approves, with a button that POSTs it back, and approve on POST: mail link scanners and
chat previews open links by GET and must not approve anything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import timedelta
from html import escape
from typing import TYPE_CHECKING, Literal, NamedTuple
from urllib.parse import parse_qs

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

if TYPE_CHECKING:
    from patchpilot.engine.run import Run

SALT = "patchpilot.approval"
DEFAULT_LIFETIME = timedelta(hours=24)


class ApprovalLinkError(ValueError):
    """The link is invalid or expired; the message says which, without leaking the secret."""


class ApprovalRequest(NamedTuple):
    run_id: str
    ring: str
    decision: str = "approve"  # or "reject"
    to: str = ""  # the channel the link was sent to (its recipient, when nobody is authenticated)


def _serializer(keys: Sequence[str]) -> URLSafeTimedSerializer:
    """itsdangerous with HMAC-SHA256 (its default is SHA-1); signs with the last key, verifies
    with any (rotation)."""
    return URLSafeTimedSerializer(list(keys), salt=SALT, signer_kwargs={"digest_method": hashlib.sha256})


def signing_keys(current: str, previous: str | None = None) -> list[str]:
    """The keys a link verifies with, the current one last (the one it is signed with)."""
    return [previous, current] if previous and previous != current else [current]


def sign_approval(request: ApprovalRequest, secret: str) -> str:
    data = {"run": request.run_id, "ring": request.ring, "decision": request.decision}
    return _serializer([secret]).dumps(data | ({"to": request.to} if request.to else {}))


def verify_approval(token: str, secret: str | Sequence[str], lifetime: timedelta = DEFAULT_LIFETIME) -> ApprovalRequest:
    """The request a token signs; `secret` is the key, or the keys of a rotation (any verifies)."""
    serializer = _serializer([secret] if isinstance(secret, str) else secret)
    try:
        data = serializer.loads(token, max_age=int(lifetime.total_seconds()))
    except SignatureExpired:
        raise ApprovalLinkError("the approval link has expired; ask for a new one") from None
    except BadSignature:
        raise ApprovalLinkError("the approval link is not valid") from None
    if not isinstance(data, dict) or not {"run", "ring"} <= set(data):
        raise ApprovalLinkError("the approval link is not valid")
    decision, to = str(data.get("decision", "approve")), str(data.get("to", ""))
    return ApprovalRequest(str(data["run"]), str(data["ring"]), decision, to)


class Approver(NamedTuple):
    """Who decides: `kind` says who vouches for `id`. "slack": a Slack user id (`name`: their
    username), from a verified interaction; "aws": the IAM ARN of a Function URL with IAM auth;
    "azure": the Easy Auth principal name; "link": nobody, `id` is the channel the link was sent
    to. `source`: the address the request came from."""

    kind: Literal["slack", "aws", "azure", "link"] = "link"
    id: str = ""
    name: str = ""
    source: str = ""

    @property
    def authenticated(self) -> bool:
        return self.kind != "link" and bool(self.id)

    def __str__(self) -> str:
        """As the run's log says it: "Slack U123 (alice) from 203.0.113.9"."""
        if self.kind == "link":
            who = f"approval link sent to {self.id}" if self.id else "approval link"
        else:
            label = {"slack": "Slack", "aws": "AWS", "azure": "Azure"}[self.kind]
            who = f"{label} {self.id or 'unknown'}" + (f" ({self.name})" if self.name else "")
        return who + (f" from {self.source}" if self.source else "")


class NotAnApproverError(ApprovalLinkError):
    """The ring names its approvers, and this is not one of them (or not authenticated)."""


class GroupUnreadableError(LookupError):
    """The members of a Slack user group could not be read; the message says why (never a secret)."""


GroupMembers = Callable[[str], Collection[str]]  # a Slack user group's id -> its members' user ids


def approval_refusal(run: Run, request: ApprovalRequest) -> str | None:
    """Why the run cannot take this approval now (None when it waits for exactly that ring)."""
    if run.state != "awaiting_approval" or run.current.ring != request.ring:
        return f"run {request.run_id} is not waiting for approval of ring {request.ring} ({run.status})"
    return None


def check_approver(run: Run, ring: str, approver: Approver, members: GroupMembers | None = None) -> None:
    """NotAnApproverError when the ring lists approvers and `approver` is not an authenticated one
    of them; a ring without a list takes anyone who holds a valid link or button. A Slack user
    not listed by id may be a member of a listed Slack user group (`members(group)`, read only
    then): a group whose members cannot be read (GroupUnreadableError, or no `members`) admits
    no one, and the refusal says so. Only Slack users are looked up in groups."""
    from patchpilot.policy.model import is_slack_group

    allowed = next((r.approvers for r in run.policy.rings if r.name == ring), [])
    if not allowed:
        return
    if not approver.authenticated:
        raise NotAnApproverError(
            f"ring {ring} takes approvals from its approvers only, and a link does not say who opened it "
            "(it can be forwarded): use the Slack button, or an approval endpoint that signs you in"
        )
    if approver.id in allowed:
        return
    groups = [a for a in allowed if is_slack_group(a)] if approver.kind == "slack" else []
    unreadable = []
    for group in groups:
        try:
            if members is None:
                raise GroupUnreadableError("Slack user groups are not read here")
            if approver.id in members(group):
                return
        except GroupUnreadableError as error:
            unreadable.append(f"cannot check membership of Slack group {group}: {error}")
    if unreadable:
        raise NotAnApproverError(f"{'; '.join(unreadable)}; {approver} is refused")
    raise NotAnApproverError(f"{approver} is not an approver of ring {ring}")


def approval_token(query: Mapping[str, str], body: bytes, content_type: str) -> str:
    """The token of an approval request: from the query string, a form body or a JSON body."""
    if query.get("token"):
        return query["token"]
    text = body.decode("utf-8", errors="replace")
    if content_type.startswith("application/json"):
        try:
            document = json.loads(text)
        except ValueError:
            return ""
        token = document.get("token") if isinstance(document, dict) else None
        return token if isinstance(token, str) else ""
    return parse_qs(text).get("token", [""])[0]


def approval_question(request: ApprovalRequest) -> str:
    """What the page of a link asks before it is confirmed."""
    verb = "Reject" if request.decision == "reject" else "Approve"
    return f"{verb} ring {request.ring} of run {request.run_id}?"


def approval_page(text: str, form_token: str | None = None, button: str = "Approve") -> str:
    """The HTML answer of an approval endpoint; with `form_token`, a button that POSTs the token
    back to the same URL."""
    body = f"<!DOCTYPE html><title>PatchPilot</title><p>{escape(text)}</p>"
    if form_token is not None:
        body += (
            f'<form method="post"><input type="hidden" name="token" value="{escape(form_token)}">'
            f'<button type="submit">{escape(button)}</button></form>'
        )
    return body
