"""A gate left waiting pages again: `rollout.approval_reminder` (4h by default, `0` for none) after
a ring started waiting for approval, and every as long again, at most MAX_APPROVAL_REMINDERS
times, a cloud run pages the approval_needed channels with what waits, since when, and how to
decide. A reminder of a gate decided since, or of an earlier gate, changes nothing. A local run
has no reminder: nothing runs while it waits (the AWS path: tests/test_aws_end_to_end.py)."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import engine_driver
import pytest
from test_engine import NOW, POLICY, Recorder, first_ring_approved, fleet, policy, policy_values

from patchpilot.adapters.serverless import ApprovalLinks
from patchpilot.approvals import ApprovalRequest, verify_approval
from patchpilot.engine.decide import MAX_APPROVAL_REMINDERS, Decision, decide, start_run
from patchpilot.engine.issued import standing
from patchpilot.engine.messages import ApprovalGranted, ApprovalRejected, Notify, TimerFired, Wait
from patchpilot.engine.run import Run
from patchpilot.errors import InputError
from patchpilot.notify.messages import card_for
from patchpilot.planning import plan
from patchpilot.policy import Policy, parse_policy

FOUR_HOURS = timedelta(hours=4)


def gate(pol: Policy | None = None, runtime: str = "aws") -> Decision:
    """A run whose first ring (staging) waits for approval from the start."""
    pol = pol or first_ring_approved()
    return start_run("run-1", pol, plan(pol, fleet()), NOW, runtime=runtime)  # type: ignore[arg-type]


def waits(decision: Decision) -> list[Wait]:
    return [c for c in decision.commands if isinstance(c, Wait)]


def notices(decision: Decision) -> list[Notify]:
    return [c for c in decision.commands if isinstance(c, Notify)]


def fired(wait: Wait) -> TimerFired:
    return TimerFired(id=wait.result_id, run_id=wait.run_id, command_id=wait.id)


def with_reminder(value: str) -> Policy:
    rollout = "max_failures: %(max_failures)s"
    text = POLICY.replace(f"{rollout}}}", f"{rollout}, approval_reminder: {value}}}")
    return parse_policy(text.replace("soak: 1h}", "soak: 1h, approval: required}") % policy_values())


def test_a_gate_still_waiting_past_its_reminder_pages_with_what_waits_since_when_and_how() -> None:
    started = gate()
    (asked,) = [n for n in notices(started) if n.topic == "approval_needed"]
    assert asked.severity == "info" and not card_for(asked).alert  # asking is not paging
    (wait,) = waits(started)
    assert wait.until == NOW + FOUR_HOURS and started.run.awaiting == wait.id == "run-1:ring1:remind1"

    reminded = decide(started.run, fired(wait), wait.until)
    assert not reminded.ignored and reminded.run.status == "waiting_approval"
    (notice,) = notices(reminded)
    card = card_for(notice)
    assert notice.topic == "approval_needed" and notice.severity == "error"  # routed with the request, pages
    assert card.alert and card.title == "Approval still needed: run-1"
    assert notice.text.splitlines()[0] == (
        "Ring staging of run run-1 still waits for approval, 4h since 2026-12-12T02:00+00:00: approve it with "
        "the Approve button or link of this notice in Slack or Teams, or reject it with Reject (the run ends there)."
    )
    assert notice.id == "run-1:notify:approval_needed:staging:remind1" != asked.id  # claimed per channel apart
    (again,) = waits(reminded)
    assert again.until == NOW + 2 * FOUR_HOURS and reminded.run.awaiting == again.id


def test_reminders_repeat_every_interval_at_most_three_times_the_last_saying_so() -> None:
    decision = gate()
    sent: list[Notify] = []
    while waits(decision):
        (wait,) = waits(decision)
        decision = decide(decision.run, fired(wait), wait.until)
        sent += notices(decision)
    assert len(sent) == MAX_APPROVAL_REMINDERS == 3
    assert [n.text.split(", ", 1)[1].split(" since")[0] for n in sent] == ["4h", "8h", "12h"]
    assert [n.text.endswith("This is the last reminder.") for n in sent] == [False, False, True]
    assert decision.run.state == "awaiting_approval" and decision.run.awaiting is None  # still decidable
    approved = decide(decision.run, ApprovalGranted(id="run-1:approve:staging", run_id="run-1"), NOW + FOUR_HOURS * 3)
    assert approved.run.state == "leasing"


@pytest.mark.parametrize(
    "decided",
    [
        ApprovalGranted(id="run-1:approve:staging", run_id="run-1", by="ops"),
        ApprovalRejected(id="run-1:approve:staging", run_id="run-1", by="ops", reason="freeze"),
    ],
)
def test_no_reminder_once_the_gate_is_decided(decided: ApprovalGranted | ApprovalRejected) -> None:
    started = gate()
    (wait,) = waits(started)
    after = decide(started.run, decided, NOW + timedelta(hours=1))
    assert not after.ignored and not any(w.id == wait.id for w in waits(after))
    assert standing(after.run, wait) == "done"  # the worker drops the timer when it is delivered
    late = decide(after.run, fired(wait), wait.until)
    assert late.ignored and late.run == after.run and late.commands == ()


def test_a_reminder_of_an_earlier_gate_changes_nothing_at_the_next_one(monkeypatch: pytest.MonkeyPatch) -> None:
    both = parse_policy(
        POLICY.replace("soak: 1h}", "soak: 1h, approval: required}") % policy_values(approval="required")
    )
    started = gate(both)
    (first,) = waits(started)
    approved = decide(started.run, ApprovalGranted(id="run-1:approve:staging", run_id="run-1"), NOW)
    seen: list[Run] = []
    real = engine_driver.decide

    def spy(*args: object) -> Decision:
        decision = real(*args)  # type: ignore[arg-type]
        seen.append(decision.run)
        return decision

    monkeypatch.setattr(engine_driver, "decide", spy)
    engine_driver.drive_to_end(approved, Recorder(), approve=False, start=NOW)
    at_production = next(r for r in seen if r.state == "awaiting_approval" and r.current.ring == "production")
    assert at_production.awaiting == "run-1:ring2:remind1"
    stale = decide(at_production, fired(first), first.until)
    assert stale.ignored.startswith("stale TimerFired") and stale.run == at_production and stale.commands == ()


def test_a_duplicate_timer_pages_once() -> None:
    started = gate()
    (wait,) = waits(started)
    once = decide(started.run, fired(wait), wait.until)
    twice = decide(once.run, fired(wait), wait.until + timedelta(minutes=15))
    assert twice.ignored == f"duplicate event {wait.result_id}" and twice.commands == ()


def test_a_reminder_of_zero_sets_no_timer_and_a_bad_one_is_named() -> None:
    assert first_ring_approved().rollout.approval_reminder == FOUR_HOURS  # the default
    started = gate(with_reminder("0"))
    assert waits(started) == [] and started.run.awaiting is None and started.run.status == "waiting_approval"
    assert waits(gate(with_reminder("90m")))[0].until == NOW + timedelta(minutes=90)
    with pytest.raises(InputError) as refused:
        with_reminder("4 hours")
    assert "rollout.approval_reminder" in str(refused.value)


def test_a_local_run_sets_no_reminder_and_its_notice_names_the_cli() -> None:
    started = gate(runtime="local")
    assert waits(started) == [] and started.run.awaiting is None
    (asked,) = [n for n in notices(started) if n.topic == "approval_needed"]
    assert "`patchpilot approve run-1`" in asked.text and "`patchpilot reject run-1`" in asked.text


def test_a_reminder_past_the_windows_end_says_an_approval_starts_nothing() -> None:
    short = parse_policy(POLICY.replace("soak: 1h}", "soak: 1h, approval: required}") % policy_values(duration="3h"))
    started = gate(short)
    (wait,) = waits(started)
    (notice,) = notices(decide(started.run, fired(wait), wait.until))
    assert notice.text.endswith(
        "The window ended at 2026-12-12T05:00+00:00: an approval now starts nothing (the run ends incomplete)."
    )


def test_the_gate_after_a_soak_sets_its_reminder_too() -> None:
    pol = policy(approval="required")
    waiting = engine_driver.drive_to_end(
        start_run("run-1", pol, plan(pol, fleet()), NOW, runtime="azure"), Recorder(), approve=False
    )
    reminders = [e for e in waiting.log if "still waits for approval" in e.text]
    assert waiting.current.ring == "production" and len(reminders) == MAX_APPROVAL_REMINDERS
    opened = next(e.at for e in waiting.log if e.text.startswith("Ring production needs approval"))
    assert [e.at - opened for e in reminders] == [FOUR_HOURS, 2 * FOUR_HOURS, 3 * FOUR_HOURS]


def test_a_reminder_carries_the_signed_approve_and_reject_links_of_its_gate() -> None:
    started = gate()
    (wait,) = waits(started)
    reminded = decide(started.run, fired(wait), wait.until)
    (notice,) = notices(reminded)
    base = "https://abc.lambda-url.us-east-1.on.aws/approve"
    links = dict(ApprovalLinks(lambda _: reminded.run, lambda: "k" * 64, base)(notice, "ops"))
    assert set(links) == {"Approve", "Reject"}
    token = parse_qs(urlsplit(links["Approve"]).query)["token"][0]
    assert verify_approval(token, "k" * 64) == ApprovalRequest("run-1", "staging", "approve", to="ops")
