"""Approvals from Slack: the interactivity request a Slack button sends, verified.

Slack signs each request: `v0=` + HMAC-SHA256 of `v0:<timestamp>:<body>` with the app's signing
secret (checked by slack_sdk's SignatureVerifier). A request older than five minutes is refused,
and so is one seen before (`claim` records each signature once: a replayed request carries the
same one). The button's value is a signed approval token (`patchpilot.approvals`), so what a
button decides cannot be changed on the way; the person who pressed it is taken from Slack
(`user.id`, `user.username`): the decision records them, and a ring's `approvers` are checked
against the user id.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import parse_qs

from slack_sdk.signature import Clock, SignatureVerifier

from patchpilot.approvals import ApprovalLinkError, Approver
from patchpilot.ports import Claims

log = logging.getLogger("patchpilot.approvals")
MAX_AGE_SECONDS = 300
SLACK_RESPONSE_URLS = ("https://hooks.slack.com/",)  # where a verified payload's response_url may point
ACTION_IDS = frozenset({"patchpilot_approve", "patchpilot_reject"})


class SlackRequestError(ApprovalLinkError):
    """The request is not a genuine, fresh Slack button press of PatchPilot's."""


@dataclass(frozen=True)
class SlackAction:
    token: str  # the signed approval token the button carries
    user: str  # who pressed it: "<name> on Slack"
    response_url: str | None  # where Slack accepts a replacement of the message
    approver: Approver  # the Slack user (id, name) and the address the request came from


class _At(Clock):
    """slack_sdk's clock, stopped at the moment the caller gives (the runtime's clock)."""

    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


def verify_slack_request(
    headers: Mapping[str, str],
    body: bytes,
    signing_secret: str,
    now: float,
    claim: Callable[[str], bool],
    source: str = "",
) -> SlackAction:
    """The button press in a Slack interactivity request; SlackRequestError saying why when the
    request is unsigned, badly signed, older than five minutes, replayed or not a PatchPilot button.
    `claim(key)` is True the first time it sees `key` (kept at least five minutes); `source` is the
    address the request came from."""
    lowered = {name.lower(): value for name, value in headers.items()}
    timestamp, signature = lowered.get("x-slack-request-timestamp"), lowered.get("x-slack-signature")
    if not timestamp or not signature:
        raise SlackRequestError("not a Slack request: no signature")
    try:
        age = now - int(timestamp)
    except ValueError:
        raise SlackRequestError("not a Slack request: a bad timestamp") from None
    if abs(age) > MAX_AGE_SECONDS:
        raise SlackRequestError(f"the Slack request is {int(abs(age))} s old; at most {MAX_AGE_SECONDS} s are accepted")
    verifier = SignatureVerifier(signing_secret, clock=_At(now))
    if not verifier.is_valid(body=body, timestamp=timestamp, signature=signature):
        raise SlackRequestError("the Slack signature does not match")
    if not claim(f"slack:{signature}"):
        raise SlackRequestError("this Slack request was already received (a replay)")
    return slack_action(body, source)


def slack_action(body: bytes, source: str = "") -> SlackAction:
    """The PatchPilot button of a `block_actions` payload (form field `payload`, JSON)."""
    try:
        payload = json.loads(parse_qs(body.decode("utf-8"))["payload"][0])
    except (KeyError, IndexError, ValueError, UnicodeDecodeError):
        raise SlackRequestError("not a Slack interaction: no JSON payload") from None
    actions = payload.get("actions") if isinstance(payload, dict) else None
    if payload.get("type") != "block_actions" or not isinstance(actions, list):
        raise SlackRequestError(f"not a button press: {payload.get('type') if isinstance(payload, dict) else payload}")
    ours = [a for a in actions if isinstance(a, dict) and a.get("action_id") in ACTION_IDS and a.get("value")]
    if not ours:
        raise SlackRequestError("not a PatchPilot button")
    user = payload.get("user") if isinstance(payload.get("user"), dict) else {}
    user_id, name = str(user.get("id") or ""), str(user.get("username") or user.get("name") or "")
    response_url = payload.get("response_url")
    return SlackAction(
        str(ours[0]["value"]),
        f"{name or user_id or 'someone'} on Slack",
        response_url if isinstance(response_url, str) else None,
        Approver("slack", user_id, name, source),
    )


def slack_decision(
    headers: Mapping[str, str], body: bytes, signing_secret: str, now: datetime, claims: Claims, source: str = ""
) -> SlackAction:
    """`verify_slack_request` with the runtime's clock and claims (each held twice the maximum age)."""
    until = now + timedelta(seconds=2 * MAX_AGE_SECONDS)

    def claim(key: str) -> bool:
        return claims.claim(key, until)

    return verify_slack_request(headers, body, signing_secret, now.timestamp(), claim, source)


def tell_slack(action: SlackAction, text: str) -> None:
    """Answer the person who pressed the button, in the channel, visible to them only (the
    payload's response_url). Not delivered: logged (never the URL), not raised."""
    url = action.response_url
    if not url or not url.startswith(SLACK_RESPONSE_URLS):
        return
    from slack_sdk.webhook import WebhookClient

    try:
        answer = WebhookClient(url, timeout=5).send(text=text, response_type="ephemeral", replace_original=False)
        if answer.status_code >= 400:
            log.warning("Slack did not take the answer to %s: HTTP %s", action.user, answer.status_code)
    except Exception as error:  # a network error: the decision stands, only the reply is lost
        log.warning("could not answer %s on Slack: %s", action.user, type(error).__name__)
