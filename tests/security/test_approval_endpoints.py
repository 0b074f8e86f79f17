"""Both clouds' approval endpoints answer errors the same way (issue 14): the mapping is
`patchpilot.app.approvals` (`answer_approval`, `answer_slack`), and the Lambda Function URL
(`aws_lambda.approve`) and the Azure HTTP function (`azure_functions.http_api`) only render it.
A signing secret that cannot be read is a 503 (the vault, not the caller: AWS used to raise, a
500), Slack approvals without their secret a 503 with the same text on both, a request that is
not Slack's a 401. The runtime is the real `ServerlessRuntime` over in-memory ports."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from clocks import ManualClock

from patchpilot.app.approvals import UNAVAILABLE_LINKS, UNAVAILABLE_SLACK, answer_approval, answer_slack
from patchpilot.approvals import ApprovalLinkError, ApprovalRequest
from patchpilot.bootstrap.serverless import ServerlessPorts, ServerlessRuntime
from patchpilot.ports import SecretUnavailableError
from security.world import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # aws_lambda/, azure_functions/

NOW = datetime(2026, 12, 12, 3, 0, tzinfo=UTC)
VAULT_DOWN = "secret 'patchpilot-approval-key' could not be read: AccessDenied"


class DownVault:
    def get(self, name: str) -> str:
        raise SecretUnavailableError(VAULT_DOWN.replace("patchpilot-approval-key", name))


def unused() -> Any:
    raise AssertionError("an approval that cannot be checked touches no run")


def runtime(settings: Settings | None = None) -> ServerlessRuntime:
    return ServerlessRuntime(
        ServerlessPorts(
            settings=settings or Settings(),
            log=logging.getLogger("patchpilot.test"),
            clock=ManualClock(NOW),
            store=unused,
            queue=unused,
            secrets=DownVault,
            claims=unused,
            fleet=unused,
            documents=lambda: None,
            service=unused,
            policy=unused,
        )
    )


# ---------------------------------------------------------------- the mapping


def test_an_unreadable_signing_key_is_a_503_whose_reason_is_for_the_log() -> None:
    answer = runtime().answer_approval("POST", "some-token")
    assert (answer.status, answer.text) == (503, UNAVAILABLE_LINKS)
    assert "patchpilot-approval-key" in answer.problem and "patchpilot-approval-key" not in answer.text


def test_a_bad_link_stays_a_403_and_a_missing_token_a_400() -> None:
    def forged(token: str, caller: object = None) -> tuple[ApprovalRequest, str | None]:
        raise ApprovalLinkError("the approval link is not valid")

    assert answer_approval(forged, unused, "GET", "x").status == 403
    assert answer_approval(forged, unused, "GET", "").status == 400


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (Settings(slack_signing_secret=None), "PATCHPILOT_SLACK_SIGNING_SECRET"),  # not configured
        (Settings(), "patchpilot-slack-signing-secret could not be read"),  # the vault down
    ],
)
def test_slack_approvals_that_cannot_be_checked_are_a_503(settings: Settings, problem: str) -> None:
    answer = runtime(settings).answer_slack({}, b"")
    assert (answer.status, answer.text, answer.action) == (503, UNAVAILABLE_SLACK, None)
    assert problem in answer.problem.replace("'", "")


def test_a_request_that_is_not_slacks_is_a_401() -> None:
    def not_slack() -> tuple[object, str]:
        from patchpilot.chat_approvals import SlackRequestError

        raise SlackRequestError("no Slack signature")

    answer = answer_slack(not_slack)
    assert (answer.status, answer.text) == (401, "no Slack signature")


# ---------------------------------------------------------------- both clouds render it alike


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Any:
    from aws_lambda import approve

    monkeypatch.setattr(approve, "deps", lambda log=None: runtime())
    return approve


@pytest.fixture
def azure(monkeypatch: pytest.MonkeyPatch) -> Any:
    from azure_functions import http_api

    monkeypatch.setattr(http_api, "deps", lambda log=None: runtime())
    return http_api


def test_both_clouds_answer_an_unreadable_signing_key_with_the_same_503(aws: Any, azure: Any) -> None:
    on_aws = aws.answer("POST", "some-token")
    on_azure = azure.approval("POST", "some-token")
    assert on_aws["statusCode"] == on_azure.status_code == 503
    assert "try again later" in on_aws["body"] and "try again later" in on_azure.get_body().decode()


def test_both_clouds_answer_slack_approvals_that_cannot_be_checked_with_the_same_503(aws: Any, azure: Any) -> None:
    on_aws = aws.slack({}, b"payload=x")
    on_azure = azure.slack_interaction({}, b"payload=x")
    assert on_aws == {"statusCode": 503, "body": UNAVAILABLE_SLACK}
    assert (on_azure.status_code, on_azure.get_body().decode()) == (503, UNAVAILABLE_SLACK)
