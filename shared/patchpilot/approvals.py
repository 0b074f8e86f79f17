"""Signed, expiring approval links: the way to approve a ring from a Teams card or an e-mail.

A link carries the run id and the ring it opens, signed with a secret (HMAC-SHA256 by
itsdangerous) and stamped; it is refused when tampered with, signed with another secret, or
older than its lifetime. Granting is idempotent (one ApprovalGranted per ring gate), so a link
clicked twice approves once.

The endpoints (AWS Function URL, Azure HTTP function) answer GET with a page that only says what
the link approves, with a button that POSTs it back, and approve on POST: mail link scanners and
chat previews open links by GET and must not approve anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from html import escape
from typing import TYPE_CHECKING
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
    decision: str = "approve"  # "reject" arrives with the chat approvals


def sign_approval(request: ApprovalRequest, secret: str) -> str:
    serializer = URLSafeTimedSerializer(secret, salt=SALT)
    return serializer.dumps({"run": request.run_id, "ring": request.ring, "decision": request.decision})


def verify_approval(token: str, secret: str, lifetime: timedelta = DEFAULT_LIFETIME) -> ApprovalRequest:
    serializer = URLSafeTimedSerializer(secret, salt=SALT)
    try:
        data = serializer.loads(token, max_age=int(lifetime.total_seconds()))
    except SignatureExpired:
        raise ApprovalLinkError("the approval link has expired; ask for a new one") from None
    except BadSignature:
        raise ApprovalLinkError("the approval link is not valid") from None
    if not isinstance(data, dict) or not {"run", "ring"} <= set(data):
        raise ApprovalLinkError("the approval link is not valid")
    return ApprovalRequest(str(data["run"]), str(data["ring"]), str(data.get("decision", "approve")))


def approval_refusal(run: Run, request: ApprovalRequest) -> str | None:
    """Why the run cannot take this approval now (None when it waits for exactly that ring)."""
    if run.state != "awaiting_approval" or run.current.ring != request.ring:
        return f"run {request.run_id} is not waiting for approval of ring {request.ring} ({run.status})"
    return None


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
