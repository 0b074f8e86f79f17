"""The transition table is the truth: every state a run reaches is one its row in `TRANSITIONS`
declares (engine/decide.py), and `decide` refuses a handler that leaves it anywhere else."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import get_args

import pytest
from engine_driver import RESULTS, answer_all_ok
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patchpilot.engine import decide as engine
from patchpilot.engine.decide import (
    ANY_STATE,
    START_TARGETS,
    TRANSITIONS,
    Decision,
    Transition,
    UndeclaredTransitionError,
    decide,
    declared_states,
    start_run,
)
from patchpilot.engine.messages import (
    ApprovalGranted,
    ApprovalRejected,
    CallWaveHook,
    CancelCloudScheduledRun,
    CheckHealth,
    CloudScheduledRunCancelled,
    Event,
    FollowUpFinished,
    FollowUpRequested,
    InstallPatches,
    InstancesLeased,
    LeaseInstances,
    LeavePools,
    Message,
    NoticeUndelivered,
    Outcome,
    PoolsSwept,
    ProbeAgents,
    RejoinPools,
    RollBack,
    RunHostHook,
    SnapshotsTaken,
    TakeSnapshots,
    TimerFired,
    Wait,
    WaveHookCalled,
)
from patchpilot.engine.run import CloudScheduledRun, Run, RunState
from patchpilot.inventory import Instance
from patchpilot.planning import plan, plan_cloud_scheduled
from patchpilot.policy import Policy, parse_policy

NOW = datetime(2026, 12, 12, 2, 0, tzinfo=UTC)
POLICY = """
name: transitions
schedule: {monthly: "Second Tuesday Offset+4", at: "02:00", duration: %(duration)s}
rings:
  - {name: staging, select: {tags: {Environment: staging}}, soak: %(soak)s, approval: %(first)s}
  - {name: production, select: {tags: {Environment: production}}, approval: %(second)s}
rollout: {mode: concurrent_zones, disruption_budget: 1, max_failures: %(max_failures)s, approval_reminder: 1h}
%(traffic)s"""
# Drain and re-add with the pools' health, host hooks and wave hooks (docs/traffic.md): their states too.
TRAFFIC = """traffic: {drain: true, pool_health: true}
hooks:
  before_install: {linux: "systemctl stop app"}
  after_install: {linux: "systemctl start app", windows: "Start-Service app"}
  before_wave: {url: "https://change.example.com/wave", secret: wave-key}
  after_wave: {url: "https://change.example.com/wave", secret: wave-key}
"""
CLOUD_SCHEDULED = CloudScheduledRun(
    id="/subscriptions/s1/providers/microsoft.maintenance/applyupdates/20261212030000",
    configuration_id="/subscriptions/s1/providers/microsoft.maintenance/maintenanceconfigurations/pp",
    starts_at=NOW + timedelta(minutes=40),
    ends_at=NOW + timedelta(hours=4),
    cancel_by=NOW + timedelta(minutes=30),
)


# The commands a result answers (the others, notices, releases, follow-ups, are not run here).
ANSWERED = (
    LeaseInstances,
    Wait,
    CancelCloudScheduledRun,
    ProbeAgents,
    TakeSnapshots,
    InstallPatches,
    CheckHealth,
    RollBack,
    LeavePools,
    RejoinPools,
    RunHostHook,
    CallWaveHook,
)


def fleet(staging: int, production: int) -> list[Instance]:
    return [
        Instance(
            id=f"i-{ring}-{n}",
            cloud="aws",
            region="eu-west-1",
            zone=f"eu-west-1{'ab'[n % 2]}",
            os="windows" if n % 3 == 2 else "linux",
            tags={"Environment": ring},
            traffic_pools=("tg-web",) if n % 2 == 0 else (),
        )
        for ring, count in (("staging", staging), ("production", production))
        for n in range(count)
    ]


@st.composite
def started_runs(draw: st.DrawFn) -> Decision:
    """A new run: a scheduled one of two rings (gates, soaks, short windows, follow-ups) or one
    that accompanies a cloud-scheduled run."""
    instances = fleet(draw(st.integers(0, 3)), draw(st.integers(0, 4)))
    values = {
        "duration": draw(st.sampled_from(["1h", "3h", "24h"])),
        "soak": draw(st.sampled_from(["0m", "1h"])),
        "first": draw(st.sampled_from(["auto", "required"])),
        "second": draw(st.sampled_from(["auto", "required"])),
        "max_failures": draw(st.sampled_from(["0", "1", "50%"])),
        "traffic": draw(st.sampled_from(["", TRAFFIC])),
    }
    policy: Policy = parse_policy(POLICY % values)
    runtime = draw(st.sampled_from(["local", "aws"]))
    if draw(st.booleans()):
        return start_run("run-1", policy, plan_cloud_scheduled(policy, instances), NOW, cloud_scheduled=CLOUD_SCHEDULED)
    return start_run("run-1", policy, plan(policy, instances), NOW, runtime=runtime)


def _answer(command: Message, data: st.DataObject | None, now: datetime) -> Event | None:
    """A result for `command`, each target's outcome drawn (and sometimes missing); every one ok
    and present without `data`."""

    def ok() -> bool:
        return data is None or data.draw(st.integers(0, 19)) > 0

    def present() -> bool:
        return data is None or data.draw(st.integers(0, 9)) > 0

    if isinstance(command, LeaseInstances):
        outcomes = [Outcome(id=i, ok=ok(), at=now) for i in command.targets]
        return InstancesLeased(id=command.result_id, run_id=command.run_id, command_id=command.id, results=outcomes)
    if isinstance(command, Wait):
        return TimerFired(id=command.result_id, run_id=command.run_id, command_id=command.id)
    if isinstance(command, CancelCloudScheduledRun):
        outcome = Outcome(id=command.maintenance_run, ok=ok())
        return CloudScheduledRunCancelled(
            id=command.result_id, run_id=command.run_id, command_id=command.id, results=[outcome]
        )
    if isinstance(command, RejoinPools) and command.at_run_end:
        outcomes = [
            Outcome(id=i.id, ok=ok(), items=list(i.traffic_pools) if ok() else [], at=now) for i in command.targets
        ]
        return PoolsSwept(id=command.result_id, run_id=command.run_id, command_id=command.id, results=outcomes)
    if isinstance(command, CallWaveHook):
        outcomes = [Outcome(id=command.phase, ok=ok(), at=now)]
        return WaveHookCalled(id=command.result_id, run_id=command.run_id, command_id=command.id, results=outcomes)
    if isinstance(
        command,
        ProbeAgents | TakeSnapshots | InstallPatches | CheckHealth | RollBack | LeavePools | RejoinPools | RunHostHook,
    ):
        outcomes = [o.model_copy(update={"ok": ok(), "at": now}) for o in answer_all_ok(command) if present()]
        result = RESULTS[type(command)]
        return result(id=command.result_id, run_id=command.run_id, command_id=command.id, results=outcomes)
    return None


def _noise(run: Run, data: st.DataObject, now: datetime, n: int) -> Event:
    """An event nobody asked for: a person at the gate, a notice not delivered, a follow-up."""
    kind = data.draw(st.sampled_from(["approve", "reject", "undelivered", "follow_up", "follow_up_done", "timer"]))
    if kind == "approve":
        return ApprovalGranted(id=f"approve:{n}", run_id=run.run_id)
    if kind == "reject":
        return ApprovalRejected(id=f"reject:{n}", run_id=run.run_id, reason="no")
    if kind == "undelivered":
        return NoticeUndelivered(
            id=f"n{n}:undelivered:slack",
            run_id=run.run_id,
            notice_id=f"n{n}",
            topic="run_started",
            channel="slack",
            reason="429",
            at=now,
        )
    if kind == "follow_up":
        instance = dataclasses.replace(fleet(0, 1)[0], id=f"i-late-{n}")
        return FollowUpRequested(
            id=f"followup:{n}", run_id=run.run_id, follow_up_id=f"run-1-f{n}", instances=[instance], at=now
        )
    if kind == "follow_up_done":
        started = [f.run_id for f in run.follow_ups if f.state == "started"] or ["run-1-f0"]
        return FollowUpFinished(
            id=f"{started[0]}:finished",
            run_id=run.run_id,
            follow_up_id=started[0],
            halted=data.draw(st.booleans()),
            at=now,
        )
    return TimerFired(id=f"timer:{n}", run_id=run.run_id, command_id=run.awaiting or "none")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(started_runs(), st.data())
def test_every_transition_a_random_event_sequence_takes_is_declared(start: Decision, data: st.DataObject) -> None:
    assert start.run.state in declared_states(START_TARGETS)
    run, now = start.run, NOW
    outbox = [c for c in start.commands if isinstance(c, ANSWERED)]
    delivered: list[Event] = []
    for n in range(80):
        now += timedelta(minutes=data.draw(st.sampled_from([0, 1, 7, 30, 90])))
        choice = data.draw(st.sampled_from(["answer", "answer", "answer", "noise", "again"]))
        event: Event | None = None
        if choice == "answer" and outbox:
            event = _answer(outbox.pop(data.draw(st.integers(0, len(outbox) - 1))), data, now)
        elif choice == "again" and delivered:
            event = data.draw(st.sampled_from(delivered))  # a duplicate, or a result gone stale
        if event is None:
            event = _noise(run, data, now, n)
        before = run.state
        decision = decide(run, event, now)  # raises UndeclaredTransitionError on an undeclared target
        delivered.append(event)
        if decision.ignored:
            assert decision.run == run
            continue
        row = (ANY_STATE, type(event)) if (ANY_STATE, type(event)) in TRANSITIONS else (before, type(event))
        transition = TRANSITIONS[row]
        assert transition.allows(before, decision.run.state), (before, event.type, decision.run.state)
        run = decision.run
        outbox += [c for c in decision.commands if isinstance(c, ANSWERED)]


def test_every_event_has_a_row_of_the_table() -> None:
    events = set(get_args(get_args(Event)[0]))
    assert events == {event for _, event in TRANSITIONS}


def test_the_table_declares_the_cancellation_of_a_cloud_scheduled_run() -> None:
    assert "cancelling" in TRANSITIONS[("snapshotting", SnapshotsTaken)].targets
    assert {"incomplete", "succeeded"} <= declared_states(TRANSITIONS[("soaking", TimerFired)].targets)


def _snapshotting_cloud_scheduled_run() -> tuple[Run, SnapshotsTaken]:
    """A run accompanying a cloud-scheduled run, and the result of its snapshots: every one failed."""
    values = {"duration": "3h", "soak": "0m", "first": "auto", "second": "auto", "max_failures": "1", "traffic": ""}
    policy = parse_policy(POLICY % values)
    decision = start_run(
        "run-1", policy, plan_cloud_scheduled(policy, fleet(1, 1)), NOW, cloud_scheduled=CLOUD_SCHEDULED
    )
    while decision.run.state != "snapshotting":
        command = next(c for c in decision.commands if c.id == decision.run.awaiting)
        answer = _answer(command, None, NOW)
        assert answer is not None
        decision = decide(decision.run, answer, NOW)
    command = next(c for c in decision.commands if isinstance(c, TakeSnapshots))
    failed = [Outcome(id=i.id, ok=False, detail="quota") for i in command.targets]
    return decision.run, SnapshotsTaken(id=command.result_id, run_id="run-1", command_id=command.id, results=failed)


def test_a_table_that_does_not_declare_a_reached_state_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    run, failed = _snapshotting_cloud_scheduled_run()
    assert decide(run, failed, NOW).run.state == "cancelling"  # the real table declares it
    row = ("snapshotting", SnapshotsTaken)
    wrong = TRANSITIONS[row]._replace(targets=("installing", engine.WAVE_DONE))
    monkeypatch.setitem(TRANSITIONS, row, wrong)
    with pytest.raises(UndeclaredTransitionError) as raised:
        decide(run, failed, NOW)
    message = str(raised.value)
    assert "SnapshotsTaken in state snapshotting led to state cancelling" in message
    assert "declared: installing, WaveDone" in message and "_on_snapshots_taken" in message


def test_a_handler_that_leaves_an_undeclared_state_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    run, failed = _snapshotting_cloud_scheduled_run()

    def misspelt(run: Run, event: Event, now: datetime) -> Decision:
        state: RunState = "rechecking"  # a state the row does not lead to
        return Decision(run.model_copy(update={"state": state}))

    row = ("snapshotting", SnapshotsTaken)
    monkeypatch.setitem(TRANSITIONS, row, Transition(misspelt, TRANSITIONS[row].targets))
    with pytest.raises(UndeclaredTransitionError, match=r"led to state rechecking.*fix misspelt"):
        decide(run, failed, NOW)


def test_an_event_of_any_state_may_not_change_the_state(monkeypatch: pytest.MonkeyPatch) -> None:
    run, _ = _snapshotting_cloud_scheduled_run()

    def halting(run: Run, event: Event, now: datetime) -> Decision:
        return Decision(run.model_copy(update={"state": "halted"}))

    monkeypatch.setitem(TRANSITIONS, (ANY_STATE, NoticeUndelivered), Transition(halting))
    notice = NoticeUndelivered(
        id="n:undelivered:slack",
        run_id=run.run_id,
        notice_id="n",
        topic="run_started",
        channel="slack",
        reason="429",
        at=NOW,
    )
    with pytest.raises(UndeclaredTransitionError, match=r"declared: snapshotting \(unchanged\)"):
        decide(run, notice, NOW)
