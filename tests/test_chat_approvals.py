"""A Slack button press, as Slack's interactivity request delivers it: signed with the app's
signing secret, refused when unsigned, tampered with, older than five minutes or replayed."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from slack_sdk.signature import SignatureVerifier

from patchpilot.approvals import ApprovalRequest, Approver, sign_approval, verify_approval
from patchpilot.chat_approvals import SlackAction, SlackRequestError, verify_slack_request

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
APPROVAL_KEY = "approval-signing-key-" * 3
NOW = 1_765_500_000
TOKEN = sign_approval(ApprovalRequest("weu-monthly-20261212-0200", "production"), APPROVAL_KEY)


def press(action_id: str = "patchpilot_approve", value: str = TOKEN, kind: str = "block_actions") -> bytes:
    payload = {
        "type": kind,
        "user": {"id": "U0A1B2C3D", "username": "alice", "name": "alice", "team_id": "T0123"},
        "api_app_id": "A0PATCHPILOT",
        "team": {"id": "T0123", "domain": "contoso-ops"},
        "channel": {"id": "C0ONCALL", "name": "oncall"},
        "response_url": "https://hooks.slack.com/actions/T0123/1234/abcd",
        "actions": [
            {"action_id": action_id, "block_id": "approval", "type": "button", "value": value, "action_ts": str(NOW)}
        ],
    }
    return urlencode({"payload": json.dumps(payload)}).encode()


def signed(body: bytes, at: int = NOW, secret: str = SIGNING_SECRET) -> dict[str, str]:
    signature = SignatureVerifier(secret).generate_signature(timestamp=str(at), body=body)
    assert signature is not None
    return {
        "X-Slack-Request-Timestamp": str(at),
        "X-Slack-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }


class Seen:
    def __init__(self) -> None:
        self.keys: set[str] = set()

    def claim(self, key: str) -> bool:
        fresh = key not in self.keys
        self.keys.add(key)
        return fresh


def test_a_genuine_button_press_gives_the_token_and_who_pressed_it() -> None:
    body = press()
    action = verify_slack_request(signed(body), body, SIGNING_SECRET, NOW + 3, Seen().claim, "203.0.113.9")
    presser = Approver("slack", "U0A1B2C3D", "alice", "203.0.113.9")
    assert action == SlackAction(TOKEN, "alice on Slack", "https://hooks.slack.com/actions/T0123/1234/abcd", presser)
    assert verify_approval(action.token, APPROVAL_KEY).ring == "production"


def test_a_replayed_request_is_refused() -> None:
    body, seen = press(), Seen()
    verify_slack_request(signed(body), body, SIGNING_SECRET, NOW, seen.claim)
    with pytest.raises(SlackRequestError, match=r"already received \(a replay\)"):
        verify_slack_request(signed(body), body, SIGNING_SECRET, NOW + 10, seen.claim)


@pytest.mark.parametrize(
    ("headers", "now", "message"),
    [
        ({}, NOW, "no signature"),
        (signed(press(), at=NOW - 301), NOW, "301 s old; at most 300 s"),
        (signed(press(), at=NOW + 400), NOW, "400 s old"),
        (signed(press(), secret="another-secret"), NOW, "signature does not match"),
        ({"X-Slack-Request-Timestamp": "yesterday", "X-Slack-Signature": "v0=00"}, NOW, "a bad timestamp"),
    ],
)
def test_unsigned_stale_or_forged_requests_are_refused(headers: dict[str, str], now: int, message: str) -> None:
    seen = Seen()
    with pytest.raises(SlackRequestError, match=message):
        verify_slack_request(headers, press(), SIGNING_SECRET, now, seen.claim)
    assert not seen.keys  # nothing recorded for a request that was refused


def test_a_body_changed_on_the_way_does_not_match_its_signature() -> None:
    headers = signed(press())
    forged = press(value=sign_approval(ApprovalRequest("another-run", "production"), "guess"))
    with pytest.raises(SlackRequestError, match="signature does not match"):
        verify_slack_request(headers, forged, SIGNING_SECRET, NOW, Seen().claim)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"payload=not-json", "no JSON payload"),
        (b"text=hello", "no JSON payload"),
        (press(kind="view_submission"), "not a button press: view_submission"),
        (press(action_id="someone_elses_button"), "not a PatchPilot button"),
    ],
)
def test_other_interactions_are_refused_with_what_they_are(body: bytes, message: str) -> None:
    with pytest.raises(SlackRequestError, match=message):
        verify_slack_request(signed(body), body, SIGNING_SECRET, NOW, Seen().claim)
