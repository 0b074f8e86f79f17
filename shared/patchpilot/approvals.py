"""Signed, expiring approval links: the way to approve a ring from a Teams card or an e-mail.

A link carries the run id and the ring it opens, signed with a secret (HMAC-SHA256 by
itsdangerous) and stamped; it is refused when tampered with, signed with another secret, or
older than its lifetime. Granting is idempotent (one ApprovalGranted per ring gate), so a link
clicked twice approves once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

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
