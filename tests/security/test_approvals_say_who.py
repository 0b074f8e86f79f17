"""Approvals say who made them, and from where; a ring's `approvers` admit no one else; approval
links are HMAC-SHA256, and a rotation's previous key still verifies."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import urlencode

import pytest
from itsdangerous import URLSafeTimedSerializer
from slack_sdk.signature import SignatureVerifier

from patchpilot.approvals import SALT, ApprovalLinkError, ApprovalRequest, Approver, sign_approval, verify_approval
from patchpilot.errors import InputError
from patchpilot.policy import parse_policy
from security.world import (
    APPROVAL_KEY,
    EXAMPLES,
    NOW,
    PREVIOUS_KEY,
    RUN_ID,
    SLACK_SIGNING_SECRET,
    Settings,
    World,
    policy,
)

ALICE = {"id": "U0A1B2C3D", "username": "alice", "name": "alice", "team_id": "T0123"}


def token(decision: str = "approve", to: str = "", key: str = APPROVAL_KEY) -> str:
    return sign_approval(ApprovalRequest(RUN_ID, "production", decision, to), key)


def slack_press(world: World, user: dict[str, str], source: str = "203.0.113.9") -> str:
    payload = {
        "type": "block_actions",
        "user": user,
        "response_url": "https://hooks.slack.com/actions/T0123/1234/abcd",
        "actions": [{"action_id": "patchpilot_approve", "type": "button", "value": token(to="ops")}],
    }
    body = urlencode({"payload": json.dumps(payload)}).encode()
    at = str(int(NOW.timestamp()))
    signature = SignatureVerifier(SLACK_SIGNING_SECRET).generate_signature(timestamp=at, body=body)
    assert signature is not None
    headers = {"X-Slack-Request-Timestamp": at, "X-Slack-Signature": signature}
    _, answer = world.approve_from_slack(headers, body, source)
    return answer


def test_slack_approval_records_user_and_source(tmp_path: Path) -> None:
    world = World(tmp_path, policy(), {})
    assert slack_press(world, ALICE) == f"approved ring production of run {RUN_ID}"
    events, log = world.decided()
    assert "Ring production approved by Slack U0A1B2C3D (alice) from 203.0.113.9" in log
    assert [(e.by, e.source) for e in events] in ([], [("Slack U0A1B2C3D (alice) from 203.0.113.9", "203.0.113.9")])


def test_link_approval_records_the_channel_it_was_sent_to_and_source(tmp_path: Path) -> None:
    world = World(tmp_path, policy(), {})
    answer = world.answer_approval("POST", token("reject", to="oncall"), Approver(source="198.51.100.7"))
    assert answer.status == 200 and answer.decided
    _, log = world.decided()
    assert any("rejected by approval link sent to oncall from 198.51.100.7" in line for line in log), log


def test_aws_iam_caller_of_a_function_url_is_the_approver() -> None:
    from aws_lambda_powertools.utilities.data_classes import LambdaFunctionUrlEvent

    from aws_lambda.approve import caller

    arn = "arn:aws:iam::123456789012:user/alice"
    context = {"http": {"method": "POST", "sourceIp": "203.0.113.9"}, "authorizer": {"iam": {"userArn": arn}}}
    assert caller(LambdaFunctionUrlEvent({"requestContext": context, "headers": {}})) == Approver(
        "aws", arn, source="203.0.113.9"
    )
    anonymous = {"http": {"method": "POST", "sourceIp": "203.0.113.9"}}
    assert caller(LambdaFunctionUrlEvent({"requestContext": anonymous, "headers": {}})) == Approver(
        source="203.0.113.9"
    )


def test_forged_easy_auth_header_is_ignored_without_easy_auth() -> None:
    from azure_functions.http_api import caller

    headers = {"X-MS-CLIENT-PRINCIPAL-NAME": "alice@contoso.com", "X-Forwarded-For": "203.0.113.9:50312, 10.0.0.4"}
    assert caller(headers, {"WEBSITE_AUTH_ENABLED": "True"}) == Approver(
        "azure", "alice@contoso.com", source="203.0.113.9"
    )
    assert caller(headers, {}) == Approver(source="203.0.113.9")  # anyone can send the header to a bare app


def test_approver_outside_allow_list_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    world = World(tmp_path, policy(approvers=["U0BOBBOB1"]), {})
    with caplog.at_level(logging.WARNING):
        answer = slack_press(world, ALICE)
    assert answer == "Slack U0A1B2C3D (alice) from 203.0.113.9 is not an approver of ring production"
    assert "U0A1B2C3D" in caplog.text and "refused" in caplog.text
    assert world.decided()[0] == [] and world.store.load(RUN_ID).state == "awaiting_approval"
    assert slack_press(world, {"id": "U0BOBBOB1", "username": "bob"}) == f"approved ring production of run {RUN_ID}"


def test_bare_link_is_refused_when_the_ring_names_its_approvers(tmp_path: Path) -> None:
    world = World(tmp_path, policy(approvers=["U0BOBBOB1", "alice@contoso.com"]), {})
    for method in ("GET", "POST"):
        refused = world.answer_approval(method, token(to="oncall"), Approver(source="203.0.113.9"))
        assert refused.status == 403 and "a link does not say who opened it" in refused.text
    signed_in = Approver("azure", "alice@contoso.com", source="203.0.113.9")
    assert world.answer_approval("POST", token(to="oncall"), signed_in).decided


def test_slack_user_group_in_allow_list_is_refused_by_the_policy() -> None:
    text = (
        (EXAMPLES / "policy.yaml")
        .read_text()
        .replace("    approval: auto", "    approval: required\n    approvers: [U0A1B2C3D, S0ONCALL1]")
    )
    with pytest.raises(InputError, match=r"Slack user groups \(S…\) are not supported"):
        parse_policy(text)


def test_link_signed_with_previous_key_is_accepted_during_rotation(tmp_path: Path) -> None:
    rotating = Settings(approval_previous_secret="patchpilot-approval-key-previous")
    world = World(tmp_path, policy(), {"patchpilot-approval-key-previous": PREVIOUS_KEY}, rotating)
    assert world.answer_approval("POST", token(key=PREVIOUS_KEY)).decided
    after = World(tmp_path / "after", policy(), {})  # the rotation over: the previous key is gone
    assert after.answer_approval("POST", token(key=PREVIOUS_KEY)).status == 403
    assert verify_approval(token(), [PREVIOUS_KEY, APPROVAL_KEY]).run_id == RUN_ID  # new links: the current key


def test_sha1_signed_link_is_refused(tmp_path: Path) -> None:
    old_format = URLSafeTimedSerializer(APPROVAL_KEY, salt=SALT).dumps(
        {"run": RUN_ID, "ring": "production", "decision": "approve"}
    )  # itsdangerous' default digest: SHA-1
    with pytest.raises(ApprovalLinkError, match="not valid"):
        verify_approval(old_format, APPROVAL_KEY)
    world = World(tmp_path, policy(), {})
    assert world.answer_approval("POST", old_format).status == 403
