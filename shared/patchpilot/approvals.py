"""Signed, expiring approval links: the way to approve a ring from a Teams card or an e-mail.

A link carries the run id, the ring it opens and the channel it was sent to, signed with a
secret (HMAC-SHA256 by itsdangerous) and stamped; it is refused when tampered with, signed with
another secret or with SHA-1 (the old format), or older than its lifetime. During a key rotation
the previous key still verifies (links are always signed with the current one). Granting is
idempotent (one decision per ring gate), so a link clicked twice approves once.

Who decided is an `Approver`: the Slack user who pressed a button, the identity an authenticated
endpoint vouches for (AWS IAM, Azure Easy Auth), or else the link's recipient; with the request's
source address. A ring's `approvers` (policy) admit only those Slack users or authenticated
identities: a bare link can be forwarded, so with an allow-list it is not enough.

The endpoints (AWS Function URL, Azure HTTP function) answer GET with a page that only says what
the link approves, with a button that POSTs it back, and approve on POST: mail link scanners and
chat previews open links by GET and must not approve anything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from html import escape
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qs

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

if TYPE_CHECKING:
    from patchpilot.engine.run import Run

SALT = "patchpilot.approval"
DEFAULT_LIFETIME = timedelta(hours=24)


class ApprovalLinkError(ValueError):
    """The link is invalid or expired; the message says which, without leaking the secret."""


@dataclass(frozen=True)
class ApprovalRequest:
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


@dataclass(frozen=True)
class Approver:
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


def approval_refusal(run: Run, request: ApprovalRequest) -> str | None:
    """Why the run cannot take this approval now (None when it waits for exactly that ring)."""
    if run.state != "awaiting_approval" or run.current.ring != request.ring:
        return f"run {request.run_id} is not waiting for approval of ring {request.ring} ({run.status})"
    return None


def check_approver(run: Run, ring: str, approver: Approver) -> None:
    """NotAnApproverError when the ring lists approvers and `approver` is not an authenticated one
    of them; a ring without a list takes anyone who holds a valid link or button."""
    allowed = next((r.approvers for r in run.policy.rings if r.name == ring), [])
    if not allowed:
        return
    if not approver.authenticated:
        raise NotAnApproverError(
            f"ring {ring} takes approvals from its approvers only, and a link does not say who opened it "
            "(it can be forwarded): use the Slack button, or an approval endpoint that signs you in"
        )
    if approver.id not in allowed:
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
