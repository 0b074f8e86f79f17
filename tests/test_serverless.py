"""What both serverless runtimes share: the notice of a run's end names the run's report, and a
report that cannot be written never stops the notice."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from patchpilot.adapters.serverless import ApprovalLinks, ReportingNotifier
from patchpilot.approvals import ApprovalRequest, sign_approval, verify_approval
from patchpilot.engine.decide import start_run
from patchpilot.engine.messages import Notify
from patchpilot.engine.run import Run
from patchpilot.inventory import load_inventory
from patchpilot.planning import plan
from patchpilot.policy import load_policy
from patchpilot.ports import UnknownRunError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
POLICY = load_policy(str(EXAMPLES / "policy.yaml"))
RUNNING = start_run("run-1", POLICY, plan(POLICY, load_inventory(str(EXAMPLES / "fleet.json"))), datetime.now(UTC)).run
FINISHED = RUNNING.model_copy(update={"state": "succeeded"})
KEY = "approval-signing-key-" * 3


class Store:
    def __init__(self, run: Run | None) -> None:
        self.run = run

    def load(self, run_id: str) -> Run:
        if self.run is None:
            raise UnknownRunError(run_id)
        return self.run


class Sent:
    def __init__(self) -> None:
        self.notices: list[Notify] = []

    def notify(self, command: Notify) -> None:
        self.notices.append(command)


def notice(topic: str) -> Notify:
    return Notify(id=f"run-1:notify:{topic}", run_id="run-1", topic=topic, text="Run run-1 succeeded.")  # type: ignore[arg-type]


def test_the_end_of_a_run_names_its_report() -> None:
    sent, published = Sent(), []

    def publish(run: Run) -> str:
        published.append(run.run_id)
        return "https://st.blob.core.windows.net/patchpilot-reports/run-1.html"

    ReportingNotifier(sent, Store(FINISHED), publish).notify(notice("run_finished"))  # type: ignore[arg-type]
    assert published == ["run-1"]
    assert sent.notices[0].text == (
        "Run run-1 succeeded. Report: https://st.blob.core.windows.net/patchpilot-reports/run-1.html"
    )


@pytest.mark.parametrize(("topic", "run"), [("ring_finished", FINISHED), ("run_finished", RUNNING)])
def test_other_notices_and_unfinished_runs_write_no_report(topic: str, run: Run) -> None:
    sent = Sent()

    def publish(run: Run) -> str:
        raise AssertionError("no report expected")

    ReportingNotifier(sent, Store(run), publish).notify(notice(topic))  # type: ignore[arg-type]
    assert sent.notices == [notice(topic)]


def test_a_report_that_cannot_be_written_is_logged_and_the_notice_still_goes(caplog: pytest.LogCaptureFixture) -> None:
    sent = Sent()

    def publish(run: Run) -> str:
        raise OSError("the storage account is unreachable")

    ReportingNotifier(sent, Store(FINISHED), publish).notify(notice("run_halted"))  # type: ignore[arg-type]
    ReportingNotifier(sent, Store(None), publish).notify(notice("run_halted"))  # type: ignore[arg-type]
    assert [n.text for n in sent.notices] == ["Run run-1 succeeded."] * 2
    assert "the report of run run-1 was not written: the storage account is unreachable" in caplog.text


# ---------------------------------------------------------------- approval links


def awaiting() -> Run:
    ring_two = next(i for i, w in enumerate(RUNNING.waves) if w.ring == "production")
    return RUNNING.model_copy(update={"state": "awaiting_approval", "cursor": ring_two})


@pytest.mark.parametrize(
    ("base", "joint"),
    [
        ("https://abc.lambda-url.us-east-1.on.aws/approve", "?"),
        ("https://app.azurewebsites.net/api/approve?code=k", "&"),
    ],
)
def test_an_approval_notice_carries_signed_approve_and_reject_links(base: str, joint: str) -> None:
    notice = Notify(
        id="run-1:notify:approval_needed",
        run_id="run-1",
        topic="approval_needed",
        text="Ring production needs approval.",
    )
    links = dict(ApprovalLinks(Store(awaiting()).load, lambda: KEY, base)(notice, "ops-slack"))
    assert set(links) == {"Approve", "Reject"}
    for label, decision in (("Approve", "approve"), ("Reject", "reject")):
        assert links[label].startswith(base + joint + "token=")
        token = parse_qs(urlsplit(links[label]).query)["token"][0]
        assert verify_approval(token, KEY) == ApprovalRequest("run-1", "production", decision, to="ops-slack")


def test_links_only_for_a_run_that_waits_and_a_key_that_can_be_read(caplog: pytest.LogCaptureFixture) -> None:
    base = "https://abc.lambda-url.us-east-1.on.aws/approve"
    notice = Notify(id="n", run_id="run-1", topic="approval_needed", text="Ring production needs approval.")
    cases = [
        ApprovalLinks(Store(FINISHED).load, lambda: KEY, base),  # no longer waiting
        ApprovalLinks(Store(awaiting()).load, lambda: None, base),  # no key configured
        ApprovalLinks(Store(awaiting()).load, lambda: KEY, None),  # no endpoint
    ]

    def unreadable() -> str:
        raise OSError("Secrets Manager is throttling")

    cases.append(ApprovalLinks(Store(awaiting()).load, unreadable, base))
    for links in cases:
        assert links(notice, "ops-slack") == ()
    assert "approval links for run run-1 were not made: Secrets Manager is throttling" in caplog.text


def test_slack_shows_approval_links_as_interactive_buttons_carrying_the_token() -> None:
    from patchpilot.notify.messages import card_for
    from patchpilot.notify.slack import slack_message

    token = sign_approval(ApprovalRequest("run-1", "production"), KEY)
    text = f"Ring production needs approval. Approve: https://x.on.aws/approve?token={token} Report: https://r/x.html"
    notice = Notify(id="n", run_id="run-1", topic="approval_needed", text=text)
    (actions,) = [b for b in slack_message(card_for(notice))["blocks"] if b["type"] == "actions"]
    approve, report = actions["elements"]
    assert approve == {
        "type": "button",
        "text": {"type": "plain_text", "text": "Approve", "emoji": True},
        "action_id": "patchpilot_approve",
        "value": token,
        "style": "primary",
    }
    assert report["url"] == "https://r/x.html" and "value" not in report


def test_a_link_for_a_ring_without_approvers_reads_no_slack_group() -> None:
    """The group reader (slack_sdk's Web API client: some 15 ms of a cold start) is built only
    when a Slack user group must be looked up."""
    from patchpilot.app.approvals import ApprovalEndpoints
    from patchpilot.notify import EnvironmentSecrets

    class Clock:
        def now(self) -> datetime:
            return datetime.now(UTC)

    def no_groups() -> Callable[[str], frozenset[str]]:
        raise AssertionError("the Slack group reader was built")

    endpoints = ApprovalEndpoints(
        lambda: Store(awaiting()),  # type: ignore[arg-type,return-value]
        lambda: None,  # type: ignore[arg-type,return-value]
        lambda: EnvironmentSecrets({"KEY": KEY}),
        no_groups,
        Clock(),
        "KEY",
        None,
    )
    token = sign_approval(ApprovalRequest("run-1", "production"), KEY)
    assert endpoints.preview(token) == (ApprovalRequest("run-1", "production"), None)
