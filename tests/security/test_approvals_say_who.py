"""Approvals say who made them, and from where; a ring's `approvers` admit no one else (a Slack
user group admits its members, read from a fake Slack Web API on loopback, and nobody when they
cannot be read); approval links are HMAC-SHA256, and a rotation's previous key still verifies."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

import pytest
from itsdangerous import URLSafeTimedSerializer
from slack_sdk.signature import SignatureVerifier
from webhook_server import Reply

from patchpilot.approvals import SALT, ApprovalLinkError, ApprovalRequest, Approver, sign_approval, verify_approval
from patchpilot.errors import InputError
from patchpilot.policy import parse_policy
from security.slack_api import FakeSlackApi, fake_slack_api
from security.world import (
    APPROVAL_KEY,
    EXAMPLES,
    PREVIOUS_KEY,
    RUN_ID,
    SLACK_SIGNING_SECRET,
    Settings,
    World,
    policy,
)

ALICE = {"id": "U0A1B2C3D", "username": "alice", "name": "alice", "team_id": "T0123"}
BOB = {"id": "U0BOBBOB1", "username": "bob"}
ONCALL = "S0ONCALL1"  # a Slack user group
BOT_TOKEN = "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx"
BOT_TOKEN_SECRET = "patchpilot-slack-bot-token"


def token(decision: str = "approve", to: str = "", key: str = APPROVAL_KEY) -> str:
    return sign_approval(ApprovalRequest(RUN_ID, "production", decision, to), key)


def slack_press(world: World, user: dict[str, str], source: str = "203.0.113.9", trigger: str = "1") -> str:
    """The answer to `user` pressing Approve now (by the world's clock); each `trigger` is
    another press (a press sent twice is a replay)."""
    payload = {
        "type": "block_actions",
        "user": user,
        "trigger_id": trigger,
        "response_url": "https://hooks.slack.com/actions/T0123/1234/abcd",
        "actions": [{"action_id": "patchpilot_approve", "type": "button", "value": token(to="ops")}],
    }
    body = urlencode({"payload": json.dumps(payload)}).encode()
    at = str(int(world.clock.now().timestamp()))
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


def test_slack_user_group_in_allow_list_is_accepted_and_a_malformed_id_refused_by_the_policy() -> None:
    def ring_approvers(approvers: str) -> str:
        text = (EXAMPLES / "policy.yaml").read_text()
        return text.replace("    approval: auto", f"    approval: required\n    approvers: [{approvers}]")

    parsed = parse_policy(ring_approvers(f"U0A1B2C3D, {ONCALL}"))
    assert [a for r in parsed.rings for a in r.approvers] == ["U0A1B2C3D", ONCALL]
    for malformed in ("s0oncall1", "S", "S0-ONCALL", "oncall", "@oncall", "<!subteam^S0ONCALL1>"):
        with pytest.raises(InputError, match=r"expected a Slack user id \(U…, W…\), a Slack user group id \(S…\)"):
            parse_policy(ring_approvers(f'"{malformed}"'))


@pytest.fixture
def slack_api() -> Iterator[FakeSlackApi]:
    with fake_slack_api() as api:
        yield api


def group_world(tmp_path: Path, api: FakeSlackApi, approvers: list[str], **settings: str | None) -> World:
    """A run whose production ring lists `approvers`; group members are read from `api` with the
    bot token in BOT_TOKEN_SECRET (or as `settings` say)."""
    env = Settings(**({"slack_bot_token_secret": BOT_TOKEN_SECRET} | settings))
    world = World(tmp_path, policy(approvers=approvers), {BOT_TOKEN_SECRET: BOT_TOKEN}, env)
    world.slack_api_url = api.url
    return world


def test_member_of_an_allowed_slack_group_may_approve(tmp_path: Path, slack_api: FakeSlackApi) -> None:
    slack_api.groups[ONCALL] = ["U0CAROL01", ALICE["id"]]
    world = group_world(tmp_path, slack_api, ["U0BOBBOB1", ONCALL])
    assert slack_press(world, ALICE) == f"approved ring production of run {RUN_ID}"
    assert "Ring production approved by Slack U0A1B2C3D (alice) from 203.0.113.9" in world.decided()[1]
    (call,) = slack_api.calls
    assert call.method == "usergroups.users.list" and call.arguments["usergroup"] == ONCALL
    assert call.authorization == f"Bearer {BOT_TOKEN}"


def test_non_member_of_an_allowed_slack_group_is_refused(
    tmp_path: Path, slack_api: FakeSlackApi, caplog: pytest.LogCaptureFixture
) -> None:
    slack_api.groups[ONCALL] = ["U0CAROL01"]
    world = group_world(tmp_path, slack_api, ["U0BOBBOB1", ONCALL])
    with caplog.at_level(logging.WARNING):
        answer = slack_press(world, ALICE)
    assert answer == "Slack U0A1B2C3D (alice) from 203.0.113.9 is not an approver of ring production"
    assert "refused" in caplog.text and "U0A1B2C3D" in caplog.text
    assert world.decided()[0] == [] and world.store.load(RUN_ID).state == "awaiting_approval"
    assert slack_press(world, BOB) == f"approved ring production of run {RUN_ID}"  # listed by id
    assert len(slack_api.calls) == 1  # bob was not looked up


@pytest.mark.parametrize(
    ("settings", "replies", "reason"),
    [
        ({"slack_bot_token_secret": None}, [], "no Slack bot token is configured (PATCHPILOT_SLACK_BOT_TOKEN_SECRET)"),
        ({"slack_bot_token_secret": "patchpilot-no-such-secret"}, [], "the Slack bot token could not be read"),
        (
            {},
            [Reply(200, '{"ok": false, "error": "missing_scope", "needed": "usergroups:read"}')],
            ("the Slack API answered missing_scope (needs usergroups:read)"),
        ),
        ({}, [Reply(200, '{"ok": false, "error": "invalid_auth"}')], "the Slack API answered invalid_auth"),
        ({}, [Reply(500, "<html>oops</html>")], "the Slack API answered HTTP 500"),
        ({}, [Reply(200, '{"ok": true, "users": "U0A1B2C3D"}')], "the Slack API answered no list of members"),
        (
            {},
            [Reply(429, '{"ok": false, "error": "ratelimited"}', (("Retry-After", "60"),))],
            ("the Slack API answered ratelimited"),
        ),
    ],
    ids=["no-token", "token-unreadable", "missing-scope", "invalid-auth", "server-error", "malformed", "rate-limited"],
)
def test_group_membership_that_cannot_be_read_refuses_the_approval(
    tmp_path: Path,
    slack_api: FakeSlackApi,
    caplog: pytest.LogCaptureFixture,
    settings: dict[str, str | None],
    replies: list[Reply],
    reason: str,
) -> None:
    """Fail closed: alice is in the group, but it cannot be read now, so she cannot approve."""
    slack_api.groups[ONCALL] = [ALICE["id"]]
    slack_api.then(*replies)
    world = group_world(tmp_path, slack_api, ["U0BOBBOB1", ONCALL], **settings)
    with caplog.at_level(logging.WARNING):
        answer = slack_press(world, ALICE)
    assert answer.startswith(f"cannot check membership of Slack group {ONCALL}: {reason}"), answer
    assert answer.endswith("Slack U0A1B2C3D (alice) from 203.0.113.9 is refused")
    assert f"cannot check membership of Slack group {ONCALL}" in caplog.text
    assert world.decided()[0] == [] and world.store.load(RUN_ID).state == "awaiting_approval"


def test_group_members_are_read_once_per_five_minutes(tmp_path: Path, slack_api: FakeSlackApi) -> None:
    slack_api.groups[ONCALL] = ["U0CAROL01"]
    world = group_world(tmp_path, slack_api, [ONCALL])
    refused = "Slack U0A1B2C3D (alice) from 203.0.113.9 is not an approver of ring production"
    assert slack_press(world, ALICE, trigger="1") == refused
    slack_api.groups[ONCALL].append(ALICE["id"])  # added to the group on Slack
    world.clock.advance(timedelta(minutes=4, seconds=59))
    assert slack_press(world, ALICE, trigger="2") == refused  # the group as read 5 minutes ago
    assert len(slack_api.calls) == 1
    world.clock.advance(timedelta(seconds=1))
    assert slack_press(world, ALICE, trigger="3") == f"approved ring production of run {RUN_ID}"
    assert len(slack_api.calls) == 2


def test_failed_group_lookup_is_not_kept(tmp_path: Path, slack_api: FakeSlackApi) -> None:
    slack_api.groups[ONCALL] = [ALICE["id"]]
    slack_api.then(Reply(200, '{"ok": false, "error": "internal_error"}'))
    world = group_world(tmp_path, slack_api, [ONCALL])
    assert slack_press(world, ALICE, trigger="1").startswith(f"cannot check membership of Slack group {ONCALL}")
    assert slack_press(world, ALICE, trigger="2") == f"approved ring production of run {RUN_ID}"


def test_rate_limited_group_lookup_waits_for_slack_and_tries_again(tmp_path: Path, slack_api: FakeSlackApi) -> None:
    """slack_sdk's rate-limit retry handler honours a short Retry-After (a long one refuses, above)."""
    slack_api.groups[ONCALL] = [ALICE["id"]]
    slack_api.then(Reply(429, '{"ok": false, "error": "ratelimited"}', (("Retry-After", "0"),)))
    world = group_world(tmp_path, slack_api, [ONCALL])
    assert slack_press(world, ALICE) == f"approved ring production of run {RUN_ID}"
    assert len(slack_api.calls) == 2


def test_slack_group_admits_no_link_or_signed_in_identity(tmp_path: Path, slack_api: FakeSlackApi) -> None:
    """A group is checked for Slack users only: an IAM or Entra identity is in no Slack group."""
    slack_api.groups[ONCALL] = ["alice@contoso.com"]
    world = group_world(tmp_path, slack_api, [ONCALL])
    signed_in = Approver("azure", "alice@contoso.com", source="203.0.113.9")
    refused = world.answer_approval("POST", token(to="oncall"), signed_in)
    assert refused.status == 403 and "is not an approver of ring production" in refused.text
    assert world.answer_approval("POST", token(to="oncall"), Approver(source="203.0.113.9")).status == 403
    assert slack_api.calls == [] and world.store.load(RUN_ID).state == "awaiting_approval"


def test_slack_bot_token_never_reaches_a_log(
    tmp_path: Path, slack_api: FakeSlackApi, caplog: pytest.LogCaptureFixture
) -> None:
    """Even from a Slack API that echoes it back, and with every logger at DEBUG (slack_sdk logs
    requests and answers there)."""
    echo = {"ok": False, "error": "invalid_auth", "response_metadata": {"messages": [f"token {BOT_TOKEN} revoked"]}}
    slack_api.then(Reply(200, json.dumps(echo)))
    world = group_world(tmp_path, slack_api, [ONCALL])
    with caplog.at_level(logging.DEBUG):
        answer = slack_press(world, ALICE)
    assert slack_api.calls[0].authorization == f"Bearer {BOT_TOKEN}"  # it was used
    assert answer.startswith(f"cannot check membership of Slack group {ONCALL}: the Slack API answered invalid_auth")
    assert "cannot check membership" in caplog.text
    for text in (answer, caplog.text, *world.decided()[1]):
        assert BOT_TOKEN not in text and BOT_TOKEN[12:36] not in text


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
